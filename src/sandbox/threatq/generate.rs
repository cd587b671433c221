//! A deterministic IOC generator: indicator `id` under seed `seed` is always the same JSON, built on demand, so a
//! million IOCs cost nothing until they are served. It covers the common types, both shapes of type, status,
//! score and tags, the attributes the export maps, and the values that break naive encoders.

use chrono::DateTime;
use serde_json::{Map, Value, json};

/// Indicator types with their ids (the stand-in's `GET /api/indicator/types`).
pub const TYPES: &[(u64, &str)] = &[
    (1, "IP Address"),
    (2, "FQDN"),
    (3, "URL"),
    (4, "MD5"),
    (5, "SHA-1"),
    (6, "SHA-256"),
    (7, "Email Address"),
    (8, "CIDR Block"),
    (9, "IPv6 Address"),
    (10, "Filename"),
    (11, "Mutex"),
    (12, "ASN"),
    (13, "User-agent"),
    (14, "Registry Key"),
];

/// ThreatQ's default statuses (the stand-in's `GET /api/indicator/statuses`).
pub const STATUSES: &[(u64, &str)] =
    &[(1, "Active"), (2, "Expired"), (3, "Indirect"), (4, "Review"), (5, "Whitelisted")];

const ATTACK_PHASES: &[&str] =
    &["Reconnaissance", "Delivery", "Exploitation", "Installation", "Command and Control", "Actions on Objectives"];
const THREAT_TYPES: &[&str] = &["Malware", "Phishing", "Botnet", "C2", "Spam", "Scanner", "Ransomware"];
const ADVERSARIES: &[(u64, &str)] =
    &[(29, "APT 29"), (28, "APT 28"), (41, "Lazarus Group"), (7, "FIN7"), (12, "Sandworm Team"), (3, "Equipo \"Ñ\"")];
const SOURCES: &[&str] = &["Emerging Threats", "AlienVault OTX", "Abuse.ch", "ThreatQ Labs", "Internal SOC"];
const TAGS: &[&str] = &["watchlist", "tlp:amber", "campaign-2024", "false positive?", "東京"];
/// Attribute values with the separators and quotes an exporter must survive.
const TRICKY_TEXT: &[&str] = &[
    "Spear, \"phish\" | mail",
    "line one\nline two",
    "carriage\r\nreturn",
    "semi; colon",
    "tab\tand 'quote'",
    "emoji 🐍 ünïcödé",
];
/// 2023-01-01 00:00:00 UTC.
const EPOCH: i64 = 1_672_531_200;

/// Builds indicators by id; ids start at 1.
#[derive(Clone, Copy, Debug)]
pub struct Generator {
    seed: u64,
}

/// A splitmix64 sequence seeded by (seed, id): cheap, and the same numbers every time.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, list: &[T]) -> T {
        list[(self.next() % list.len() as u64) as usize]
    }
}

fn timestamp(seconds: i64) -> String {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default().format("%Y-%m-%d %H:%M:%S").to_string()
}

fn hex(seed: u64, id: u64, kind: &str, len: usize) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes()).update(&id.to_le_bytes()).update(kind.as_bytes());
    hasher.finalize().to_hex()[..len].to_owned()
}

/// Every 1000th id repeats the FQDN of the id before it under another type, as ThreatQ allows.
fn is_duplicate(id: u64) -> bool {
    id.is_multiple_of(1000)
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Generator { seed }
    }

    fn draws(&self, id: u64) -> Draws {
        Draws(self.seed ^ id.wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }

    fn type_of(&self, id: u64, draws: &mut Draws) -> (u64, &'static str) {
        if is_duplicate(id) {
            TYPES[9]
        } else if is_duplicate(id + 1) {
            TYPES[1]
        } else {
            draws.pick(TYPES)
        }
    }

    fn value(&self, id: u64, type_name: &str, tricky: bool) -> String {
        let seed = self.seed;
        match (type_name, tricky) {
            ("IP Address", _) => {
                format!("{}.{}.{}.{}", 1 + (id >> 24) % 223, (id >> 16) & 255, (id >> 8) & 255, id & 255)
            }
            ("FQDN", false) => format!("host-{id}.s{seed}.example.net"),
            ("FQDN", true) => format!("bücher-{id}.例え.jp"),
            ("URL", false) => format!("https://cdn-{id}.example.com/dl/{}?id={id}&r=1", hex(seed, id, "url", 8)),
            // Very long URLs, with commas and pipes in the path.
            ("URL", true) => format!("https://x-{id}.example.org/a,b|c/{}", "segment/".repeat(500)),
            ("MD5", _) => hex(seed, id, "md5", 32),
            ("SHA-1", _) => hex(seed, id, "sha1", 40),
            ("SHA-256", _) => hex(seed, id, "sha256", 64),
            ("Email Address", false) => format!("user{id}@mail-{}.example.org", id % 97),
            ("Email Address", true) => format!("o'brien.\"{id}\"@example.org"),
            ("CIDR Block", _) => format!("{}.{}.{}.0/24", 1 + (id >> 16) % 223, (id >> 8) & 255, id & 255),
            ("IPv6 Address", _) => format!("2001:db8::{:x}:{:x}", id >> 16, id & 0xffff),
            ("Filename", false) => format!("invoice_{id}.pdf.exe"),
            ("Filename", true) => format!("report \"final\", v{id}|draft\r\nnotes.doc"),
            ("Mutex", _) => format!("Global\\mtx-{id}"),
            ("ASN", _) => format!("AS{}", 64_512 + id),
            ("User-agent", _) => format!("Mozilla/5.0 (compatible; bot-{id}; +https://bot.example)"),
            _ => format!("HKLM\\Software\\Run\\svc{id}"),
        }
    }

    /// The indicator `id` as ThreatQ's `POST /api/indicators/query` would return it.
    pub fn indicator(&self, id: u64) -> Value {
        let mut d = self.draws(id);
        let (type_id, type_name) = self.type_of(id, &mut d);
        let tricky = d.chance(3);
        let value =
            if is_duplicate(id) { self.value(id - 1, "FQDN", false) } else { self.value(id, type_name, tricky) };
        let (status_id, status_name) = if d.chance(75) { STATUSES[0] } else { d.pick(STATUSES) };
        let created = EPOCH + id as i64 * 7;
        let updated = created + (d.next() % (180 * 86_400)) as i64;

        let mut ioc = Map::new();
        ioc.insert("id".into(), json!(id));
        ioc.insert("value".into(), json!(value));
        let class = if matches!(type_name, "MD5" | "SHA-1" | "SHA-256" | "Filename" | "Mutex" | "Registry Key") {
            "host"
        } else {
            "network"
        };
        ioc.insert("class".into(), json!(class));
        ioc.insert("type_id".into(), json!(type_id));
        let object_shapes = d.chance(70);
        ioc.insert(
            "type".into(),
            if object_shapes { json!({"id": type_id, "name": type_name}) } else { json!(type_name) },
        );
        ioc.insert("status_id".into(), json!(status_id));
        ioc.insert(
            "status".into(),
            if object_shapes { json!({"id": status_id, "name": status_name}) } else { json!(status_name) },
        );
        let generated = (d.next() % 1001) as f64 / 100.0;
        let score = if d.chance(50) {
            json!((generated.round()) as u64)
        } else {
            let manual = d.chance(20).then(|| (d.next() % 11).to_string());
            json!({"generated_score": format!("{generated:.2}"), "manual_score": manual})
        };
        ioc.insert("score".into(), score);
        ioc.insert("created_at".into(), json!(timestamp(created)));
        ioc.insert("updated_at".into(), json!(timestamp(updated)));
        ioc.insert("touched_at".into(), json!(timestamp(updated)));
        match d.next() % 10 {
            0..=2 => ioc.insert("expires_at".into(), json!(timestamp(updated + 90 * 86_400))),
            3 => ioc.insert("expired_at".into(), json!(timestamp(updated + 86_400))),
            _ => ioc.insert("expires_at".into(), Value::Null),
        };

        let mut attributes = Vec::new();
        let mut attribute = |name: &str, value: &str| {
            let n = attributes.len() as u64;
            attributes.push(json!({"id": id * 16 + n, "attribute_id": n + 1, "name": name, "value": value}));
        };
        if d.chance(70) {
            attribute("Attack Phase", d.pick(ATTACK_PHASES));
        }
        if d.chance(70) {
            attribute("Threat Type", d.pick(THREAT_TYPES));
            if d.chance(20) {
                attribute("Threat Type", d.pick(THREAT_TYPES));
            }
        }
        if d.chance(10) {
            attribute("Actor", d.pick(ADVERSARIES).1);
        }
        if d.chance(5) {
            attribute("Related Adversary", d.pick(ADVERSARIES).1);
        }
        if d.chance(5) {
            attribute("Related Actor", d.pick(ADVERSARIES).1);
        }
        if tricky || d.chance(3) {
            attribute("Description", d.pick(TRICKY_TEXT));
        }
        attribute("Confidence", &(d.next() % 101).to_string());
        ioc.insert("attributes".into(), Value::Array(attributes));

        let adversaries: Vec<Value> = match d.next() % 100 {
            0..=9 => vec![d.pick(ADVERSARIES)],
            10..=13 => vec![ADVERSARIES[0], d.pick(&ADVERSARIES[1..])],
            _ => vec![],
        }
        .into_iter()
        .map(|(adv_id, name)| json!({"id": adv_id, "name": name}))
        .collect();
        if !adversaries.is_empty() && d.chance(50) {
            ioc.insert("related_adversary_count".into(), json!(adversaries.len()));
        }
        ioc.insert("adversaries".into(), Value::Array(adversaries));

        let sources: Vec<Value> = (0..1 + d.next() % 2)
            .map(|n| json!({"id": n + 1, "name": d.pick(SOURCES), "pivot": {"creator_source_id": 1}}))
            .collect();
        ioc.insert("sources".into(), Value::Array(sources));
        let tag_objects = d.chance(50);
        let tags: Vec<Value> = (0..d.next() % 3)
            .map(|_| {
                let tag = d.pick(TAGS);
                if tag_objects { json!({"name": tag}) } else { json!(tag) }
            })
            .collect();
        ioc.insert("tags".into(), Value::Array(tags));
        Value::Object(ioc)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn same_seed_same_indicator_and_seeds_differ() {
        let (a, b) = (Generator::new(1), Generator::new(2));
        assert_eq!(a.indicator(4242), Generator::new(1).indicator(4242));
        assert_ne!(a.indicator(4242), b.indicator(4242));
    }

    #[test]
    fn covers_types_shapes_and_tricky_values() {
        let g = Generator::new(7);
        let iocs: Vec<Value> = (1..=5000).map(|id| g.indicator(id)).collect();
        let type_name = |i: &Value| i["type"].get("name").unwrap_or(&i["type"]).as_str().unwrap().to_owned();
        let types: BTreeSet<String> = iocs.iter().map(type_name).collect();
        assert_eq!(types.len(), TYPES.len());
        assert!(iocs.iter().any(|i| i["type"].is_string()) && iocs.iter().any(|i| i["type"].is_object()));
        assert!(iocs.iter().any(|i| i["score"].is_u64()) && iocs.iter().any(|i| i["score"].is_object()));
        assert!(iocs.iter().any(|i| i["expired_at"].is_string()));
        let values: Vec<&str> = iocs.iter().map(|i| i["value"].as_str().unwrap()).collect();
        for needle in ["\n", "\r", ",", "|", "\"", "ü"] {
            assert!(values.iter().any(|v| v.contains(needle)), "no value with {needle:?}");
        }
        assert!(values.iter().any(|v| v.len() > 4000));
        assert_eq!(iocs[999]["value"], iocs[998]["value"]);
        assert_ne!(type_name(&iocs[999]), type_name(&iocs[998]));
        let unique: BTreeSet<(&str, String)> =
            iocs.iter().map(|i| (i["value"].as_str().unwrap(), type_name(i))).collect();
        assert_eq!(unique.len(), iocs.len(), "(value, type) pairs are unique");
    }
}
