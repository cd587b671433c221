//! devo-sdk's `Lookup` wire format: syslog lines that open (START), fill (rows, `.DELETE` rows) and close (END) one
//! lookup upload. The SDK's rules are reproduced exactly (Python `str.strip()`, its bare-number regex with Unicode
//! digits, the float repr in the run id); only the escaping differs by [`EncoderMode`].

use std::sync::LazyLock;

use regex::Regex;

use crate::devo::{ColumnType, Table};

/// How a field value is escaped inside its quotes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncoderMode {
    /// Quotes doubled, LF sent as `\n` and CR as `\r`: no value can end a line and forge a row, a DELETE or an END.
    #[default]
    Safe,
    /// devo-sdk's `clean_field` with its two flags (both off in the SDK by default): raw quotes and newlines go out
    /// as they are. Only for byte-parity checks against the SDK.
    SdkCompatible { escape_quotes: bool, escape_newline: bool },
}

impl EncoderMode {
    /// The SDK's defaults: no escaping at all.
    pub const SDK_DEFAULTS: Self = Self::SdkCompatible { escape_quotes: false, escape_newline: false };
}

/// FULL replaces the lookup; INC upserts by key and deletes the `.DELETE` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Full,
    Inc,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Inc => "INC",
        }
    }
}

/// The SDK's spelling of a column type in the headers JSON.
pub fn type_name(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Str => "str",
        ColumnType::Int => "int",
        ColumnType::Int4 => "int4",
        ColumnType::Int8 => "int8",
        ColumnType::Float => "float",
        ColumnType::Bool => "bool",
        ColumnType::Ip4 => "ip4",
    }
}

/// The headers JSON of START and END: key column first, no spaces. Column names are `^[A-Za-z0-9_]+$` (checked by
/// `devo::pem::check_name`), so they need no JSON escaping.
pub fn headers_json(table: &Table) -> String {
    let mut out = String::from("[");
    for (i, column) in table.columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let key = if i == 0 { ",\"key\":true" } else { "" };
        out.push_str(&format!("{{\"{}\":{{\"type\":\"{}\"{key}}}}}", column.name, type_name(column.ty)));
    }
    out.push(']');
    out
}

/// The run id every line of one upload carries: `<repr(time.time())>_<lookup>`, as the SDK makes it.
pub fn run_id(unix_time: f64, lookup: &str) -> String {
    format!("{}_{lookup}", python_float_repr(unix_time))
}

/// Python's `repr(float)`: the fewest significant digits that round-trip, rounded half-to-even (Rust's shortest
/// form rounds an exact tie up, e.g. 3760691875.59765625), in fixed notation for 1e-4 <= |x| < 1e16 with `.0` on whole
/// numbers, otherwise as `d.ddde+XX`. `x` must be finite.
pub fn python_float_repr(x: f64) -> String {
    debug_assert!(x.is_finite());
    let shortest = format!("{x:e}");
    let significant = shortest.split_once('e').map_or(1, |(m, _)| m.bytes().filter(u8::is_ascii_digit).count());
    // Exact formatting at that precision rounds ties to even, as Python's dtoa does.
    let rounded = format!("{x:.*e}", significant - 1);
    let (mantissa, exponent) = rounded.split_once('e').expect("`{:e}` always has an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    if !(-4..16).contains(&exponent) {
        return format!("{sign}{mantissa}e{}{:02}", if exponent < 0 { '-' } else { '+' }, exponent.abs());
    }
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let point = exponent + 1;
    if point <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else {
        let point = point as usize;
        let whole = format!("{digits:0<point$}");
        let fraction = digits.get(point..).filter(|f| !f.is_empty()).unwrap_or("0");
        format!("{sign}{}.{fraction}", &whole[..point])
    }
}

/// Python's `str.isspace()`, which `str.strip()` uses: Unicode White_Space plus the ASCII separators
/// U+001C..U+001F (which Rust's `char::is_whitespace` leaves out).
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^-?\d+(?:\.\d+)*$").expect("the bare-number pattern compiles"));

/// The SDK's `^-?\d+((\.\d+)*)$`; Python's `\d` and the regex crate's are both Unicode category Nd. ASCII text, nearly
/// every value, is matched without the regex (`\d` is `0-9` there).
pub fn is_number(value: &str) -> bool {
    if !value.is_ascii() {
        return NUMBER.is_match(value);
    }
    // Digits, with single dots between them.
    let mut after_digit = false;
    for b in value.strip_prefix('-').unwrap_or(value).bytes() {
        match b {
            b'0'..=b'9' => after_digit = true,
            b'.' if after_digit => after_digit = false,
            _ => return false,
        }
    }
    after_digit
}

/// Appends one value as the SDK's `clean_field` does: stripped, bare if a number, else quoted and escaped per `mode`.
pub fn push_field(out: &mut String, value: &str, mode: EncoderMode) {
    // Most values start and end with a plain ASCII character, and need no stripping.
    let plain = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii() && !is_python_space(char::from(*b)));
    let (first, last) = (value.as_bytes().first(), value.as_bytes().last());
    let value = if plain(first) && plain(last) { value } else { value.trim_matches(is_python_space) };
    if is_number(value) {
        out.push_str(value);
        return;
    }
    let (quotes, newline, carriage_return) = match mode {
        EncoderMode::Safe => (true, true, true),
        EncoderMode::SdkCompatible { escape_quotes, escape_newline } => (escape_quotes, escape_newline, false),
    };
    out.push('"');
    // Escapes replace single ASCII bytes, found with memchr; the text between them is copied a run at a time.
    let mut copied = 0;
    for i in memchr::memchr3_iter(b'"', b'\n', b'\r', value.as_bytes()) {
        let escape = match value.as_bytes()[i] {
            b'"' if quotes => "\"\"",
            b'\n' if newline => "\\n",
            b'\r' if carriage_return => "\\r",
            _ => continue,
        };
        out.push_str(&value[copied..i]);
        out.push_str(escape);
        copied = i + 1;
    }
    out.push_str(&value[copied..]);
    out.push('"');
}

/// Why a received row payload does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed lookup row at byte {at}: {problem}")]
pub struct DecodeError {
    pub at: usize,
    pub problem: &'static str,
}

/// Splits a [`EncoderMode::Safe`] row (`<key>,<field>,...`) back into values: bare numbers, quoted strings with `""`
/// for a quote and `\n` / `\r` for LF / CR. A backslash before any other character is itself. (Like Devo's own
/// reading of `escape_newline`, a value that held a backslash followed by `n` comes back as a line feed.)
pub fn decode_fields(fields: &str) -> Result<Vec<String>, DecodeError> {
    let mut values = Vec::new();
    let n = decode_fields_into(fields, &mut values)?;
    values.truncate(n);
    Ok(values)
}

/// [`decode_fields`] into `values`, reusing the strings it holds; returns how many of them this row filled (those
/// after are left over from longer rows).
pub fn decode_fields_into(fields: &str, values: &mut Vec<String>) -> Result<usize, DecodeError> {
    let bytes = fields.as_bytes();
    let err = |at, problem| Err(DecodeError { at, problem });
    let mut n = 0;
    let mut i = 0;
    loop {
        if values.len() == n {
            values.push(String::new());
        }
        let value = &mut values[n];
        value.clear();
        if bytes.get(i) == Some(&b'"') {
            i += 1;
            let mut chunk_start = i;
            loop {
                match bytes.get(i) {
                    None => return err(i, "unterminated quoted value"),
                    Some(b'"') if bytes.get(i + 1) == Some(&b'"') => {
                        value.push_str(&fields[chunk_start..i]);
                        value.push('"');
                        i += 2;
                        chunk_start = i;
                    }
                    Some(b'"') => {
                        value.push_str(&fields[chunk_start..i]);
                        i += 1;
                        break;
                    }
                    Some(b'\\') if matches!(bytes.get(i + 1), Some(b'n' | b'r')) => {
                        value.push_str(&fields[chunk_start..i]);
                        value.push(if bytes[i + 1] == b'n' { '\n' } else { '\r' });
                        i += 2;
                        chunk_start = i;
                    }
                    Some(_) => i += 1,
                }
            }
        } else {
            let end = fields[i..].find(',').map_or(fields.len(), |n| i + n);
            if !is_number(&fields[i..end]) {
                return err(i, "a value that is neither quoted nor a number");
            }
            value.push_str(&fields[i..end]);
            i = end;
        }
        n += 1;
        match bytes.get(i) {
            None => return Ok(n),
            Some(b',') => i += 1,
            Some(_) => return err(i, "a quote inside a quoted value that is not doubled"),
        }
    }
}

/// Encodes the lines of one upload. Every line is `<14>Jan  1 00:00:00 HOSTNAME TAG: PAYLOAD\n`, the SDK's constant
/// syslog header; START, rows and END share the run id.
pub struct LookupEncoder {
    mode: EncoderMode,
    run_id: String,
    control_prefix: String,
    data_prefix: String,
    delete_prefix: String,
    headers: String,
}

impl LookupEncoder {
    pub fn new(table: &Table, action: Action, run_id: String, hostname: &str, mode: EncoderMode) -> Self {
        let prefix = |tag: String| format!("<14>Jan  1 00:00:00 {hostname} {tag}: {run_id}|");
        let name = &table.name;
        Self {
            mode,
            control_prefix: prefix(format!("my.lookup.control.{name}.{}", action.as_str())),
            data_prefix: prefix(format!("my.lookup.data.{name}")),
            delete_prefix: prefix(format!("my.lookup.data.{name}.DELETE")),
            headers: headers_json(table),
            run_id,
        }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn start(&self, out: &mut String) {
        self.control(out, "START");
    }

    /// END repeats START's headers exactly.
    pub fn end(&self, out: &mut String) {
        self.control(out, "END");
    }

    fn control(&self, out: &mut String, event: &str) {
        out.push_str(&self.control_prefix);
        out.push_str(event);
        out.push('|');
        out.push_str(&self.headers);
        out.push('\n');
    }

    /// An add/update row: `values` in column order, key first.
    pub fn row(&self, values: impl IntoIterator<Item = impl AsRef<str>>, out: &mut String) {
        Self::data_line(&self.data_prefix, values, self.mode, out);
    }

    /// A `.DELETE` row: only the key (first value) counts; the uploader sends the other values empty.
    pub fn delete(&self, values: impl IntoIterator<Item = impl AsRef<str>>, out: &mut String) {
        Self::data_line(&self.delete_prefix, values, self.mode, out);
    }

    fn data_line(prefix: &str, values: impl IntoIterator<Item = impl AsRef<str>>, mode: EncoderMode, out: &mut String) {
        out.push_str(prefix);
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_field(out, value.as_ref(), mode);
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The ASCII fast path says what the SDK's pattern says.
        #[test]
        fn bare_numbers_are_what_the_pattern_matches(value in "[-0-9.a ]{0,8}|-?[0-9]{1,3}(\\.[0-9]{1,3}){0,3}") {
            proptest::prop_assert_eq!(is_number(&value), NUMBER.is_match(&value), "{:?}", value);
        }
    }
    use crate::devo::Column;

    fn field(value: &str, mode: EncoderMode) -> String {
        let mut out = String::new();
        push_field(&mut out, value, mode);
        out
    }

    #[test]
    fn strip_is_pythons_not_rusts() {
        // U+001C..U+001F are Python whitespace but not Rust's; U+200B and U+FEFF are neither.
        assert_eq!(field("\u{1c}\u{1f}\u{85}\u{a0}\u{3000} 7 \t", EncoderMode::Safe), "7");
        assert_eq!(field("\u{200b}7", EncoderMode::Safe), "\"\u{200b}7\"");
        assert_eq!(field("\u{feff}x\u{2028}", EncoderMode::Safe), "\"\u{feff}x\"");
    }

    #[test]
    fn numbers_are_bare_including_unicode_digits() {
        for bare in ["007", "-7", "10.0.0.1", "1.2.3.4.5", "\u{663}\u{664}", "\u{ff17}.\u{1d7d8}"] {
            assert_eq!(field(bare, EncoderMode::Safe), bare);
        }
        for quoted in ["+1", "1e5", "1.", ".5", "--1", "1..2", "", "-", "\u{2167}"] {
            assert_eq!(field(quoted, EncoderMode::Safe), format!("\"{quoted}\""));
        }
    }

    #[test]
    fn safe_mode_escapes_everything_that_could_end_a_line() {
        assert_eq!(field("a\"b\nc\rd\\e", EncoderMode::Safe), r#""a""b\nc\rd\e""#);
        assert_eq!(field("a\"b\nc\rd", EncoderMode::SDK_DEFAULTS), "\"a\"b\nc\rd\"");
        let sdk_escapes = EncoderMode::SdkCompatible { escape_quotes: true, escape_newline: true };
        assert_eq!(field("a\"b\nc\rd", sdk_escapes), "\"a\"\"b\\nc\rd\"");
    }

    #[test]
    fn decode_inverts_safe_encoding() {
        let values = ["k\"1", "line1\nline2\rend", "", "a,b|c", "007", "-1.5", "back\\slash\\"];
        let mut line = String::new();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            push_field(&mut line, v, EncoderMode::Safe);
        }
        assert_eq!(decode_fields(&line).unwrap(), values);
        assert!(decode_fields("\"say \"hi\"\"").is_err());
        assert!(decode_fields("abc").is_err());
        assert!(decode_fields("\"open").is_err());
    }

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1700000000.123456, "1700000000.123456"),
            (1700000000.0, "1700000000.0"),
            (0.0, "0.0"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789012345.6, "123456789012345.6"),
            (-2.5e300, "-2.5e+300"),
            // Exactly 3760691875.59765625: a tie between ...562 and ...563.
            (3760691875.5976562, "3760691875.5976562"),
            (-0.0, "-0.0"),
            (0.000123, "0.000123"),
            (1234.5, "1234.5"),
        ];
        for (x, python) in cases {
            assert_eq!(python_float_repr(x), python, "{x}");
        }
        assert_eq!(run_id(1700000000.5, "iocs"), "1700000000.5_iocs");
    }

    #[test]
    fn lines_carry_the_run_id_and_the_headers() {
        let table = Table {
            name: "iocs".into(),
            columns: vec![
                Column { name: "ioc".into(), ty: ColumnType::Str },
                Column { name: "score".into(), ty: ColumnType::Int8 },
            ],
        };
        let enc = LookupEncoder::new(&table, Action::Inc, "1.5_iocs".into(), "h", EncoderMode::Safe);
        let mut out = String::new();
        enc.start(&mut out);
        enc.row(["1.2.3.4", "80"], &mut out);
        enc.delete(["evil.com", ""], &mut out);
        enc.end(&mut out);
        let headers = r#"[{"ioc":{"type":"str","key":true}},{"score":{"type":"int8"}}]"#;
        assert_eq!(
            out,
            format!(
                "<14>Jan  1 00:00:00 h my.lookup.control.iocs.INC: 1.5_iocs|START|{headers}\n\
                 <14>Jan  1 00:00:00 h my.lookup.data.iocs: 1.5_iocs|1.2.3.4,80\n\
                 <14>Jan  1 00:00:00 h my.lookup.data.iocs.DELETE: 1.5_iocs|\"evil.com\",\"\"\n\
                 <14>Jan  1 00:00:00 h my.lookup.control.iocs.INC: 1.5_iocs|END|{headers}\n"
            )
        );
    }
}
