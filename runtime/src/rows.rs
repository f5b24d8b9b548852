//! The rows a read (or a write asked to return them) produced, as JSON object texts written one
//! after another into one buffer that is already the response's JSON array.
//!
//! A string per row, joined into the body at the end, held a page twice and cost two
//! allocations a row; here a page is written once, as the database hands its rows over
//! ([`RowsBuilder`]), and the body is the buffer itself.

use std::ops::Range;

/// JSON object texts, one per row, in one buffer.
#[derive(Clone, Debug)]
pub struct Rows {
    /// `[` followed by the rows, separated by commas: a JSON array without its closing bracket.
    text: String,
    /// Where each row ends in `text`; a row starts one byte after the previous one's end.
    ends: Vec<usize>,
}

impl Default for Rows {
    fn default() -> Self {
        Self::with_capacity(0, 0)
    }
}

/// Rows as they arrive: bytes, checked to be UTF-8 once, when the last row is in.
#[derive(Debug)]
pub struct RowsBuilder {
    /// What becomes [`Rows::text`].
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl RowsBuilder {
    /// Room for `rows` rows of `bytes` bytes in all, so a page of known size grows no more.
    pub fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut buffer = Vec::with_capacity(bytes.saturating_add(rows).saturating_add(2));
        buffer.push(b'[');
        Self {
            bytes: buffer,
            ends: Vec::with_capacity(rows),
        }
    }

    /// Makes room for the next row of about `length` bytes, growing by half rather than doubling:
    /// a large page's buffer then overshoots it by half at most, where doubling left up to
    /// twice the page allocated while it is sent.
    fn make_room(&mut self, length: usize) {
        let wanted = length + 1;
        if self.bytes.capacity() - self.bytes.len() < wanted {
            self.bytes.reserve_exact(wanted.max(self.bytes.len() / 2));
        }
    }

    /// Appends one row's JSON object text.
    pub fn push(&mut self, row: &str) {
        self.make_room(row.len());
        if !self.ends.is_empty() {
            self.bytes.push(b',');
        }
        self.bytes.extend_from_slice(row.as_bytes());
        self.ends.push(self.bytes.len());
    }

    /// Appends the row `render` writes; what it wrote is dropped when it fails.
    pub fn push_rendered<E>(&mut self, render: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        let before = self.bytes.len();
        self.make_room(before.checked_div(self.ends.len()).unwrap_or(0));
        if !self.ends.is_empty() {
            self.bytes.push(b',');
        }
        if let Err(error) = render(&mut self.bytes) {
            self.bytes.truncate(before);
            return Err(error);
        }
        self.ends.push(self.bytes.len());
        Ok(())
    }

    /// The rows, once their text is found to be UTF-8 (rendered text values could break it): one
    /// pass over the page, without copying it.
    pub fn finish(self) -> Result<Rows, std::string::FromUtf8Error> {
        Ok(Rows {
            text: String::from_utf8(self.bytes)?,
            ends: self.ends,
        })
    }
}

impl Rows {
    /// Room for `rows` rows of `bytes` bytes in all.
    pub fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut text = String::with_capacity(bytes.saturating_add(rows).saturating_add(2));
        text.push('[');
        Self {
            text,
            ends: Vec::with_capacity(rows),
        }
    }

    /// Appends one row's JSON object text.
    pub fn push(&mut self, row: &str) {
        if !self.ends.is_empty() {
            self.text.push(',');
        }
        self.text.push_str(row);
        self.ends.push(self.text.len());
    }

    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn span(&self, index: usize) -> Range<usize> {
        let start = if index == 0 { 1 } else { self.ends[index - 1] + 1 };
        start..self.ends[index]
    }

    /// Row `index`.
    pub fn get(&self, index: usize) -> Option<&str> {
        (index < self.len()).then(|| &self.text[self.span(index)])
    }

    /// The first row.
    pub fn first(&self) -> Option<&str> {
        self.get(0)
    }

    /// Every row, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|index| &self.text[self.span(index)])
    }

    /// Keeps the first `count` rows.
    pub fn truncate(&mut self, count: usize) {
        if count < self.len() {
            let end = if count == 0 { 1 } else { self.ends[count - 1] };
            self.text.truncate(end);
            self.ends.truncate(count);
        }
    }

    /// Replaces every row with what `rewrite` makes of it.
    pub fn rewrite<E>(&mut self, mut rewrite: impl FnMut(&str) -> Result<String, E>) -> Result<(), E> {
        let mut rewritten = Self::with_capacity(self.len(), self.text.len());
        for row in self.iter() {
            rewritten.push(&rewrite(row)?);
        }
        *self = rewritten;
        Ok(())
    }

    /// The rows as one JSON array text, without copying them.
    pub fn into_json_array(mut self) -> String {
        self.text.push(']');
        self.text
    }

    /// The first row, without copying it.
    pub fn into_first(mut self) -> Option<String> {
        let end = *self.ends.first()?;
        self.text.truncate(end);
        self.text.remove(0);
        Some(self.text)
    }
}

impl<S: AsRef<str>> FromIterator<S> for Rows {
    fn from_iter<I: IntoIterator<Item = S>>(rows: I) -> Self {
        let mut collected = Self::default();
        for row in rows {
            collected.push(row.as_ref());
        }
        collected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(texts: &[&str]) -> Rows {
        texts.iter().collect()
    }

    #[test]
    fn the_buffer_is_the_json_array() {
        assert_eq!(Rows::default().into_json_array(), "[]");
        assert_eq!(rows(&["{\"a\":1}"]).into_json_array(), "[{\"a\":1}]");
        assert_eq!(
            rows(&["{\"a\":1}", "{}", "{\"b\":\"x,y\"}"]).into_json_array(),
            "[{\"a\":1},{},{\"b\":\"x,y\"}]"
        );
    }

    #[test]
    fn rows_read_back_as_they_were_pushed() {
        let pushed = ["{\"a\":1}", "{}", "{\"b\":\"é\"}"];
        let all = rows(&pushed);
        assert_eq!(all.len(), 3);
        assert_eq!(all.iter().collect::<Vec<_>>(), pushed);
        assert_eq!(all.get(1), Some("{}"));
        assert_eq!(all.get(3), None);
        assert_eq!(all.first(), Some("{\"a\":1}"));
        assert_eq!(all.clone().into_first().as_deref(), Some("{\"a\":1}"));
        assert_eq!(Rows::default().into_first(), None);
        assert_eq!(Rows::default().first(), None);
    }

    #[test]
    fn truncating_keeps_a_valid_array() {
        let mut all = rows(&["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"]);
        all.truncate(5);
        assert_eq!(all.len(), 3);
        all.truncate(2);
        assert_eq!(all.clone().into_json_array(), "[{\"a\":1},{\"a\":2}]");
        all.push("{\"a\":4}");
        assert_eq!(all.clone().into_json_array(), "[{\"a\":1},{\"a\":2},{\"a\":4}]");
        all.truncate(0);
        assert!(all.is_empty());
        assert_eq!(all.into_json_array(), "[]");
    }

    fn render(bytes: &'static [u8]) -> impl FnOnce(&mut Vec<u8>) -> Result<(), &'static str> {
        move |out| {
            out.extend_from_slice(bytes);
            Ok(())
        }
    }

    #[test]
    fn built_rows_are_checked_once_and_a_failed_one_leaves_no_trace() {
        let mut built = RowsBuilder::with_capacity(4, 0);
        built.push("{\"a\":1}");
        built.push_rendered(render(b"{\"b\":\"\xc3\xa9\"}")).expect("rendered");
        let failed = built.push_rendered(|out| {
            out.extend_from_slice(b"{\"c\":");
            Err("bad value")
        });
        assert_eq!(failed, Err("bad value"));
        built.push("{}");
        let all = built.finish().expect("UTF-8");
        assert_eq!(all.iter().collect::<Vec<_>>(), ["{\"a\":1}", "{\"b\":\"é\"}", "{}"]);
        assert_eq!(all.into_json_array(), "[{\"a\":1},{\"b\":\"é\"},{}]");

        let mut built = RowsBuilder::with_capacity(0, 0);
        built.push_rendered(render(b"{\"c\":\"\xff\"}")).expect("rendered");
        assert!(built.finish().is_err(), "text that is not UTF-8 is refused");
        let empty = RowsBuilder::with_capacity(0, 0).finish().expect("UTF-8");
        assert_eq!(empty.into_json_array(), "[]");
    }

    #[test]
    fn a_large_page_overshoots_its_size_by_half_at_most() {
        let row = format!("{{\"text\":\"{}\"}}", "x".repeat(90));
        let mut built = RowsBuilder::with_capacity(16, 16 * 128);
        // Just past a doubling of the first capacity, where doubling would leave ~1.8 times the page.
        for _ in 0..5_700 {
            built.push(&row);
            built
                .push_rendered(|out| {
                    out.extend_from_slice(row.as_bytes());
                    Ok::<(), ()>(())
                })
                .expect("rendered");
        }
        let all = built.finish().expect("UTF-8");
        assert_eq!(all.len(), 11_400);
        assert!(
            all.text.capacity() <= all.text.len() * 3 / 2 + row.len(),
            "{} bytes allocated for {}",
            all.text.capacity(),
            all.text.len()
        );
    }

    #[test]
    fn rewriting_replaces_each_row() {
        let mut all = rows(&["{\"a\":1}", "{\"a\":2}"]);
        all.rewrite(|row| Ok::<_, ()>(row.replace('a', "b")))
            .expect("rewritten");
        assert_eq!(all.into_json_array(), "[{\"b\":1},{\"b\":2}]");
    }
}
