//! PostgreSQL rows rendered as JSON objects by the runtime, from the values' binary forms.
//!
//! Building a row's JSON in PostgreSQL (`json_build_object`, which formats every numeric and
//! timestamp as text first) cost the database about 2 µs a row, more than the whole rest of a
//! list's statement; the binary forms of integers, decimals, timestamps and UUIDs cost it almost
//! nothing to send and little here to format. Values of other types are still rendered by the
//! database (`to_json(...)::text`) and spliced in as they come, so every type PostgreSQL can
//! render keeps working. Each value's text is byte for byte what `to_json` gives for it, with the
//! session time zone set to UTC as the runtime's connections do.

/// How one output column of a read reaches its row's JSON object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `int2`, `int4` or `int8`, in binary; the width comes from the value's length.
    Integer,
    /// `bool`, in binary.
    Boolean,
    /// `numeric`, in binary; written with its scale, as PostgreSQL writes it.
    Decimal,
    /// Text (`text`, `varchar`, `bpchar`, `name`, or text the statement computed), escaped here.
    Text,
    /// `timestamp`, in binary.
    Timestamp,
    /// `timestamptz`, in binary, written in UTC.
    TimestampTz,
    /// `date`, in binary.
    Date,
    /// `uuid`, in binary.
    Uuid,
    /// JSON text the database rendered, spliced in as it is.
    Json,
}

/// One member of a row's JSON object: its key, already written as `"key":`, and how its value comes.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// `"key":`, escaped.
    pub prefix: Vec<u8>,
    /// How the column's value is turned into JSON.
    pub encoding: Encoding,
}

impl Member {
    /// The member `key` whose value comes as `encoding`.
    pub fn new(key: &str, encoding: Encoding) -> Self {
        let mut prefix = Vec::with_capacity(key.len() + 3);
        push_string(&mut prefix, key.as_bytes());
        prefix.push(b':');
        Self { prefix, encoding }
    }
}

/// A row the runtime cannot render.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A value that does not have the binary form its column's type promises.
    #[error("column {index} of a PostgreSQL row is not a valid {encoding:?} value ({length} bytes)")]
    Value {
        /// The column's position.
        index: usize,
        /// What the statement expected of it.
        encoding: Encoding,
        /// The value's length.
        length: usize,
    },
    /// Text that is not UTF-8 (the database's encoding is not UTF8).
    #[error("a PostgreSQL row holds text that is not UTF-8; the runtime needs a UTF8 database")]
    NotUtf8,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01, from which its dates and timestamps count.
const POSTGRES_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The JSON object of one row: `values` are the binary values of `members`, in order, `None` for NULL.
pub fn row<'v>(members: &[Member], values: impl IntoIterator<Item = Option<&'v [u8]>>) -> Result<String, RenderError> {
    let mut out = Vec::with_capacity(members.iter().map(|m| m.prefix.len() + 16).sum::<usize>() + 2);
    row_into(&mut out, members, values)?;
    // Text values are checked here, once per row, rather than one by one.
    String::from_utf8(out).map_err(|_| RenderError::NotUtf8)
}

/// Appends the JSON object of one row to `out`, as [`row`] writes it; the caller checks that
/// what it appended is UTF-8, which only text values could break.
pub fn row_into<'v>(
    out: &mut Vec<u8>,
    members: &[Member],
    values: impl IntoIterator<Item = Option<&'v [u8]>>,
) -> Result<(), RenderError> {
    out.push(b'{');
    for (index, (member, value)) in members.iter().zip(values).enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&member.prefix);
        match value {
            None => out.extend_from_slice(b"null"),
            Some(bytes) => {
                value_into(out, member.encoding, bytes).ok_or(RenderError::Value {
                    index,
                    encoding: member.encoding,
                    length: bytes.len(),
                })?;
            }
        }
    }
    out.push(b'}');
    Ok(())
}

/// Appends one non-NULL value; `None` when `bytes` is not a value of `encoding`.
fn value_into(out: &mut Vec<u8>, encoding: Encoding, bytes: &[u8]) -> Option<()> {
    match encoding {
        Encoding::Integer => {
            let number = match bytes.len() {
                2 => i64::from(i16::from_be_bytes(bytes.try_into().ok()?)),
                4 => i64::from(i32::from_be_bytes(bytes.try_into().ok()?)),
                8 => i64::from_be_bytes(bytes.try_into().ok()?),
                _ => return None,
            };
            push_integer(out, number);
        }
        Encoding::Boolean => out.extend_from_slice(if *bytes.first()? != 0 { b"true" } else { b"false" }),
        Encoding::Decimal => decimal_into(out, bytes)?,
        Encoding::Text => push_string(out, bytes),
        Encoding::Json => out.extend_from_slice(bytes),
        Encoding::Timestamp | Encoding::TimestampTz => {
            let micros = i64::from_be_bytes(bytes.try_into().ok()?);
            timestamp_into(out, micros, encoding == Encoding::TimestampTz);
        }
        Encoding::Date => {
            let days = i32::from_be_bytes(bytes.try_into().ok()?);
            out.push(b'"');
            match days {
                i32::MAX => out.extend_from_slice(b"infinity"),
                i32::MIN => out.extend_from_slice(b"-infinity"),
                _ => {
                    let bc = date_into(out, i64::from(days));
                    if bc {
                        out.extend_from_slice(b" BC");
                    }
                }
            }
            out.push(b'"');
        }
        Encoding::Uuid => {
            let mut text = uuid::Uuid::encode_buffer();
            let text = uuid::Uuid::from_slice(bytes).ok()?.hyphenated().encode_lower(&mut text);
            out.push(b'"');
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
        }
    }
    Some(())
}

/// Appends `text` as a JSON string, escaping as PostgreSQL's `escape_json` does.
fn push_string(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    if !text.iter().any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\') {
        out.extend_from_slice(text);
        out.push(b'"');
        return;
    }
    let mut plain = 0;
    for (index, &byte) in text.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\x08' => b"\\b",
            b'\x0c' => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&text[plain..index]);
        if escaped.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escaped);
        }
        plain = index + 1;
    }
    out.extend_from_slice(&text[plain..]);
    out.push(b'"');
}

/// Appends a binary `numeric` as `numeric_out` writes it (every digit of its scale); NaN and the
/// infinities as strings, as `to_json` writes them.
fn decimal_into(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    const NEGATIVE: u16 = 0x4000;
    const NAN: u16 = 0xC000;
    const INFINITY: u16 = 0xD000;
    const NEGATIVE_INFINITY: u16 = 0xF000;
    let word = |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?])) };
    let count = usize::from(word(0)?);
    let weight = i64::from(word(2)? as i16);
    let sign = word(4)?;
    let scale = i64::from(word(6)?);
    if bytes.len() != 8 + 2 * count {
        return None;
    }
    match sign {
        NAN => {
            out.extend_from_slice(b"\"NaN\"");
            return Some(());
        }
        INFINITY => {
            out.extend_from_slice(b"\"Infinity\"");
            return Some(());
        }
        NEGATIVE_INFINITY => {
            out.extend_from_slice(b"\"-Infinity\"");
            return Some(());
        }
        NEGATIVE => out.push(b'-'),
        _ => {}
    }
    // Base-10000 digits; those past the last one sent are zero.
    let digit = |position: i64| -> u16 {
        usize::try_from(position)
            .ok()
            .filter(|&p| p < count)
            .and_then(|p| word(8 + 2 * p))
            .unwrap_or(0)
    };
    if weight < 0 {
        out.push(b'0');
    } else {
        push_integer(out, i64::from(digit(0)));
        for position in 1..=weight {
            push_padded(out, i64::from(digit(position)), 4);
        }
    }
    if scale > 0 {
        out.push(b'.');
        let mut position = weight + 1;
        let mut written = 0;
        while written < scale {
            let group = i64::from(digit(position));
            match scale - written {
                // The last group may hold more digits than the scale shows.
                left @ 1..=3 => push_padded(out, group / 10_i64.pow(4 - left as u32), left as usize),
                _ => push_padded(out, group, 4),
            }
            written += 4;
            position += 1;
        }
    }
    Some(())
}

/// Appends microseconds since 2000-01-01 as `to_json` writes a timestamp: ISO 8601 with a `T`,
/// fractional seconds without trailing zeros, `+00:00` when `zoned`, ` BC` for years before 1.
fn timestamp_into(out: &mut Vec<u8>, micros: i64, zoned: bool) {
    out.push(b'"');
    match micros {
        i64::MAX => out.extend_from_slice(b"infinity"),
        i64::MIN => out.extend_from_slice(b"-infinity"),
        _ => {
            let days = micros.div_euclid(MICROS_PER_DAY);
            let of_day = micros.rem_euclid(MICROS_PER_DAY);
            let bc = date_into(out, days);
            let seconds = of_day / 1_000_000;
            out.push(b'T');
            push_padded(out, seconds / 3600, 2);
            out.push(b':');
            push_padded(out, seconds / 60 % 60, 2);
            out.push(b':');
            push_padded(out, seconds % 60, 2);
            let mut fraction = of_day % 1_000_000;
            if fraction > 0 {
                let mut digits = 6;
                while fraction % 10 == 0 {
                    fraction /= 10;
                    digits -= 1;
                }
                out.push(b'.');
                push_padded(out, fraction, digits);
            }
            if zoned {
                out.extend_from_slice(b"+00:00");
            }
            if bc {
                out.extend_from_slice(b" BC");
            }
        }
    }
    out.push(b'"');
}

/// Appends the date `days` after 2000-01-01 as `YYYY-MM-DD` (proleptic Gregorian) and tells whether
/// it falls before year 1, when PostgreSQL writes the year counted back from 1 BC with ` BC` after.
fn date_into(out: &mut Vec<u8>, days: i64) -> bool {
    let (year, month, day) = civil_from_days(days + POSTGRES_EPOCH_DAYS);
    let (shown, bc) = if year <= 0 { (1 - year, true) } else { (year, false) };
    push_padded(out, shown, 4);
    out.push(b'-');
    push_padded(out, i64::from(month), 2);
    out.push(b'-');
    push_padded(out, i64::from(day), 2);
    bc
}

/// Appends `number` in decimal. Written out by hand: `core::fmt` was a fifth of a list's
/// rendering.
fn push_integer(out: &mut Vec<u8>, number: i64) {
    if number < 0 {
        out.push(b'-');
    }
    push_digits(out, number.unsigned_abs(), 1);
}

/// Appends the non-negative `number` in decimal with at least `width` digits, zeros first.
fn push_padded(out: &mut Vec<u8>, number: i64, width: usize) {
    const POWERS: [i64; 4] = [1000, 100, 10, 1];
    // Dates, times and a decimal's base-10000 digits: short and of known width.
    if (1..=4).contains(&width) && (0..POWERS[4 - width] * 10).contains(&number) {
        for power in &POWERS[4 - width..] {
            out.push(b'0' + (number / power % 10) as u8);
        }
        return;
    }
    push_digits(out, number.unsigned_abs(), width);
}

fn push_digits(out: &mut Vec<u8>, mut number: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    while number > 0 {
        start -= 1;
        digits[start] = b'0' + (number % 10) as u8;
        number /= 10;
    }
    start = start.min(digits.len().saturating_sub(width.max(1)));
    out.extend_from_slice(&digits[start..]);
}

/// Year (astronomical: 0 is 1 BC), month and day of the `days`-th day after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Counted in 400-year eras from 0000-03-01, so leap days fall at the end of each year.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(encoding: Encoding, bytes: &[u8]) -> String {
        let mut out = Vec::new();
        value_into(&mut out, encoding, bytes).expect("valid value");
        String::from_utf8(out).expect("UTF-8")
    }

    fn numeric(weight: i16, sign: u16, scale: u16, digits: &[u16]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [digits.len() as u16, weight as u16, sign, scale] {
            bytes.extend_from_slice(&word.to_be_bytes());
        }
        for digit in digits {
            bytes.extend_from_slice(&digit.to_be_bytes());
        }
        bytes
    }

    #[test]
    fn decimals_keep_their_scale() {
        assert_eq!(one(Encoding::Decimal, &numeric(0, 0, 4, &[123, 4500])), "123.4500");
        assert_eq!(one(Encoding::Decimal, &numeric(0, 0x4000, 1, &[12, 5000])), "-12.5");
        assert_eq!(one(Encoding::Decimal, &numeric(0, 0, 2, &[])), "0.00");
        assert_eq!(
            one(Encoding::Decimal, &numeric(-5, 0, 20, &[1])),
            "0.00000000000000000001"
        );
        assert_eq!(
            one(Encoding::Decimal, &numeric(5, 0, 1, &[1, 0, 0, 0, 0, 0, 5000])),
            "100000000000000000000.5"
        );
        assert_eq!(one(Encoding::Decimal, &numeric(1, 0, 0, &[1])), "10000");
        assert_eq!(one(Encoding::Decimal, &numeric(0, 0xC000, 0, &[])), "\"NaN\"");
        assert_eq!(one(Encoding::Decimal, &numeric(0, 0xF000, 0, &[])), "\"-Infinity\"");
    }

    #[test]
    fn timestamps_are_iso_8601_in_utc() {
        let micros = |days: i64, seconds: i64, fraction: i64| (days * 86_400 + seconds) * 1_000_000 + fraction;
        let at = micros(8767, 3 * 3600 + 4 * 60 + 5, 120_000).to_be_bytes();
        assert_eq!(one(Encoding::TimestampTz, &at), "\"2024-01-02T03:04:05.12+00:00\"");
        assert_eq!(one(Encoding::Timestamp, &at), "\"2024-01-02T03:04:05.12\"");
        assert_eq!(one(Encoding::Timestamp, &0i64.to_be_bytes()), "\"2000-01-01T00:00:00\"");
        assert_eq!(one(Encoding::TimestampTz, &i64::MAX.to_be_bytes()), "\"infinity\"");
        assert_eq!(one(Encoding::Date, &(-1i32).to_be_bytes()), "\"1999-12-31\"");
        assert_eq!(one(Encoding::Date, &i32::MIN.to_be_bytes()), "\"-infinity\"");
    }

    #[test]
    fn text_is_escaped_as_postgresql_escapes_it() {
        assert_eq!(
            one(Encoding::Text, "a\"\\\u{8}\u{c}\n\r\t\u{1}\u{7f} é".as_bytes()),
            "\"a\\\"\\\\\\b\\f\\n\\r\\t\\u0001\u{7f} é\""
        );
    }

    #[test]
    fn rows_join_members_and_nulls() {
        let members = [
            Member::new("id", Encoding::Integer),
            Member::new("na\"me", Encoding::Text),
        ];
        let id = 7i32.to_be_bytes();
        assert_eq!(
            row(&members, [Some(&id[..]), None]).expect("row"),
            "{\"id\":7,\"na\\\"me\":null}"
        );
        let error = row(&members, [Some(&b"xyz"[..]), None]).expect_err("three bytes are no integer");
        assert!(error.to_string().contains("column 0"), "{error}");
    }
}
