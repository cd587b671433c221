//! The connector record over this project's own registration contract ([OURS] in `docs/threatq.md`).

use reqwest::Method;
use serde_json::{Value, json};

use super::parse::connector_record;
use super::{Client, ConnectorDefinition, ConnectorRecord, ConnectorRegistry, Error};

const CONNECTORS: &str = "/api/connectors";
const CATEGORIES: &str = "/api/connector/categories";

fn data_of(path: &str, answer: &Value) -> Result<Value, Error> {
    answer
        .get("data")
        .cloned()
        .ok_or_else(|| Error::Garbage { path: path.to_owned(), detail: "the answer has no \"data\"".into() })
}

impl Client {
    async fn category_id(&self, category: &str) -> Result<Value, Error> {
        let answer: Value = self.call(Method::GET, CATEGORIES, &[], None).await?;
        let categories = data_of(CATEGORIES, &answer)?;
        let list = categories.as_array().map(Vec::as_slice).unwrap_or_default();
        let name_of = |c: &Value| c.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let found = list.iter().find(|c| name_of(c) == category).or_else(|| {
            // Category names are shown to people; a difference in case only is still the same category.
            list.iter().find(|c| name_of(c).eq_ignore_ascii_case(category))
        });
        match found.and_then(|c| c.get("id")) {
            Some(id) => Ok(id.clone()),
            None => Err(Error::CategoryNotFound {
                category: category.to_owned(),
                available: list.iter().map(name_of).collect(),
            }),
        }
    }

    async fn register(&self, definition: &ConnectorDefinition) -> Result<ConnectorRecord, Error> {
        let body = json!({
            "name": definition.name,
            "display_name": definition.display_name,
            "category_id": self.category_id(&definition.category).await?,
            "version": definition.version,
            "namespace": definition.namespace,
            "is_active": false,
            "user_fields": definition.user_fields,
        });
        tracing::info!("registering connector {:?} {} with ThreatQ", definition.name, definition.version);
        match self.call::<Value>(Method::POST, CONNECTORS, &[], Some(&body)).await {
            Ok(answer) => connector_record(CONNECTORS, &data_of(CONNECTORS, &answer)?),
            // Another run registered it between our lookup and our POST: use that record.
            Err(refused @ Error::Http { status: 422, .. }) => match self.find_connector(&definition.name).await? {
                Some(record) => self.upgrade(record, definition).await,
                None => Err(refused),
            },
            Err(e) => Err(e),
        }
    }

    /// Brings the record's form and version to this binary's; the user's `custom_fields` are not sent, so kept.
    async fn upgrade(
        &self,
        record: ConnectorRecord,
        definition: &ConnectorDefinition,
    ) -> Result<ConnectorRecord, Error> {
        if record.user_fields == definition.user_fields && record.version == definition.version {
            return Ok(record);
        }
        tracing::info!(
            "updating ThreatQ connector {:?} from version {:?} to {}",
            record.name,
            record.version,
            definition.version
        );
        self.put_connector(record.id, json!({"user_fields": definition.user_fields, "version": definition.version}))
            .await
    }

    async fn put_connector(&self, id: u64, body: Value) -> Result<ConnectorRecord, Error> {
        let path = format!("{CONNECTORS}/{id}");
        let answer: Value = self.call(Method::PUT, &path, &[], Some(&body)).await?;
        connector_record(&path, &data_of(&path, &answer)?)
    }
}

#[async_trait::async_trait]
impl ConnectorRegistry for Client {
    async fn find_connector(&self, name: &str) -> Result<Option<ConnectorRecord>, Error> {
        let query = [("name", name.to_owned()), ("with", "category".to_owned())];
        let answer: Value = self.call(Method::GET, CONNECTORS, &query, None).await?;
        let list = data_of(CONNECTORS, &answer)?;
        // The name filter may match loosely (a search); only the exact name is ours.
        let exact = list.as_array().into_iter().flatten().find(|c| c.get("name").and_then(Value::as_str) == Some(name));
        exact.map(|c| connector_record(CONNECTORS, c)).transpose()
    }

    async fn ensure_registered(&self, definition: &ConnectorDefinition) -> Result<ConnectorRecord, Error> {
        match self.find_connector(&definition.name).await? {
            Some(record) => self.upgrade(record, definition).await,
            None => self.register(definition).await,
        }
    }

    async fn report_run(&self, id: u64, at: chrono::DateTime<chrono::Utc>, count: u64) -> Result<(), Error> {
        let at = at.format("%Y-%m-%d %H:%M:%S").to_string();
        self.put_connector(id, json!({"last_import_at": at, "last_import_count": count})).await.map(drop)
    }
}
