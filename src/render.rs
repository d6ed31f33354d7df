//! Renders a row as JSON text exactly as PostgreSQL's `row_to_json` does (json.c:
//! composite_to_json / datum_to_json), but decides how to render each column once per relation
//! instead of once per row: row_to_json looks up every column's base type, category and output
//! function on every call: half of its time in a profile of a 1,000,000-row insert.
//! Arrays and composite columns are handed to PostgreSQL's own array_to_json / row_to_json.
//! Used by writers (trigger capture) and by the worker (rows whose rendering was deferred).

use pgrx::pg_sys::{self, Datum, Oid};
use std::cell::RefCell;
use std::ffi::CStr;

/// Why the worker could not render a transaction's rows (its rest becomes a gap).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("a captured row is damaged")]
    DamagedRow,
    #[error("a captured row without its shape")]
    NoShape,
    #[error("the captured shape of {0} is damaged")]
    DamagedShape(String),
    #[error("the column types of {0} changed after its rows were captured")]
    TypesChanged(String),
    #[error("a rendered row is not valid UTF-8")]
    NotUtf8,
    #[error("unknown time zone {0:?}")]
    UnknownTimeZone(std::ffi::CString),
    /// PostgreSQL raised an ERROR while rendering: its message.
    #[error("{0}")]
    Raised(String),
}

/// How one column is rendered; mirrors json.c's JsonTypeCategory.
enum Kind {
    Bool,
    /// Output function; quoted when not a valid JSON number (NaN, Infinity).
    Number(Box<pg_sys::FmgrInfo>),
    /// date, timestamp, timestamptz: ISO 8601 through JsonEncodeDateTime.
    DateTime(Oid),
    /// json, jsonb: the output text is already JSON.
    Json(Box<pg_sys::FmgrInfo>),
    Array,
    Composite,
    /// A non-built-in type with a cast to json: the cast function's result, verbatim.
    Cast(Box<pg_sys::FmgrInfo>),
    /// Everything else: output function, as a JSON string.
    Text(Box<pg_sys::FmgrInfo>),
}

struct Column {
    /// Zero-based attribute number in the relation's tuple descriptor.
    index: usize,
    /// `"name":`, escaped once.
    key: Vec<u8>,
    kind: Kind,
}

/// The rendering plan for one relation's rows.
pub struct RowFormat {
    columns: Vec<Column>,
    natts: usize,
    /// Whether the worker can render these rows exactly as the writer would (`deferrable`).
    deferrable: bool,
    /// Holds what output functions cache in `fn_extra`; deleted with the format.
    memory: pg_sys::MemoryContext,
}

thread_local! {
    /// A row's deformed values, reused from row to row.
    static SLOTS: RefCell<(Vec<Datum>, Vec<bool>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

use crate::pg::{array_to_json, row_to_json};

/// Whether a user-defined cast to json decides how a type renders.
#[derive(Clone, Copy, PartialEq)]
pub enum Casts {
    /// As row_to_json does: in the writer.
    Honour,
    /// In the worker, which runs as superuser and must not call functions users wrote. Only
    /// shapes that had no such cast when the writer captured them get there.
    Ignore,
}

impl RowFormat {
    /// Works out how to render rows of `desc` (json.c: json_categorize_type, per column).
    pub fn new(desc: pg_sys::TupleDesc, casts: Casts) -> RowFormat {
        // SAFETY: `desc` is a valid tuple descriptor for the call; everything cached is allocated in the context created here, which lives as long as the RowFormat.
        unsafe {
            let memory = pg_sys::AllocSetContextCreateInternal(
                pg_sys::TopMemoryContext,
                c"realtime_ext row format".as_ptr(),
                pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
                pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
                pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
            );
            let natts = (*desc).natts as usize;
            let attrs = crate::pg::versions::attributes(desc);
            let mut deferrable = true;
            let columns = attrs
                .iter()
                .enumerate()
                .filter(|(_, a)| !a.attisdropped)
                .map(|(index, a)| {
                    let mut key = Vec::new();
                    escape(&mut key, CStr::from_ptr(a.attname.data.as_ptr()).to_bytes());
                    key.push(b':');
                    let base = pg_sys::getBaseType(a.atttypid);
                    let kind = categorize(base, casts, memory);
                    deferrable &= prints_the_same_in_worker(base, &kind);
                    Column { index, key, kind }
                })
                .collect();
            RowFormat {
                columns,
                natts,
                deferrable,
                memory,
            }
        }
    }

    /// Whether this plan was made for a descriptor shaped like `desc`. Invalidation callbacks
    /// normally drop a stale plan first; this is the guard that does not rely on them.
    pub fn fits(&self, desc: pg_sys::TupleDesc) -> bool {
        // SAFETY: `desc` is a valid tuple descriptor.
        unsafe { (*desc).natts as usize == self.natts }
    }

    /// Whether the worker, given the writer's `shape::Settings`, prints every column as the
    /// writer would: built-in types whose output depends on nothing else, and enums.
    pub fn deferrable(&self) -> bool {
        self.deferrable
    }

    /// Appends the row's JSON object to `out`. Callers run it in a memory context they reset
    /// after each row, so output strings are not freed one by one.
    pub fn render(&self, tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc, out: &mut Vec<u8>) {
        SLOTS.with(|slots| {
            let (values, nulls) = &mut *slots.borrow_mut();
            // heap_deform_tuple fills one slot per attribute of `desc`.
            // SAFETY: `desc` is a valid tuple descriptor.
            let n = self.natts.max(unsafe { (*desc).natts } as usize);
            values.resize(n, Datum::from(0));
            nulls.resize(n, true);
            // SAFETY: `tuple` is a tuple of `desc`, and both arrays hold at least natts slots.
            unsafe {
                pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr())
            };
            self.write_object(values, nulls, out);
        })
    }

    fn write_object(&self, values: &[Datum], nulls: &[bool], out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, column) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&column.key);
            if nulls[column.index] {
                out.extend_from_slice(b"null");
            } else {
                // SAFETY: the datum was deformed from a tuple of this format's descriptor, and `column.kind` was worked out from that column's type.
                unsafe { render_value(&column.kind, values[column.index], out) };
            }
        }
        out.push(b'}');
    }
}

impl Drop for RowFormat {
    fn drop(&mut self) {
        // SAFETY: deleted once, by its owner.
        unsafe { pg_sys::MemoryContextDelete(self.memory) };
    }
}

unsafe fn categorize(base: Oid, casts: Casts, memory: pg_sys::MemoryContext) -> Kind {
    let function = |oid: Oid| {
        let mut info = Box::new(pg_sys::FmgrInfo::default());
        pg_sys::fmgr_info_cxt(oid, &mut *info, memory);
        info
    };
    let output = || {
        let (mut func, mut varlena) = (Oid::INVALID, false);
        pg_sys::getTypeOutputInfo(base, &mut func, &mut varlena);
        function(func)
    };
    match base {
        pg_sys::BOOLOID => Kind::Bool,
        pg_sys::INT2OID
        | pg_sys::INT4OID
        | pg_sys::INT8OID
        | pg_sys::FLOAT4OID
        | pg_sys::FLOAT8OID
        | pg_sys::NUMERICOID => Kind::Number(output()),
        pg_sys::DATEOID | pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => Kind::DateTime(base),
        pg_sys::JSONOID | pg_sys::JSONBOID => Kind::Json(output()),
        _ if pg_sys::get_element_type(base) != Oid::INVALID
            || [
                pg_sys::ANYARRAYOID,
                pg_sys::ANYCOMPATIBLEARRAYOID,
                pg_sys::RECORDARRAYOID,
            ]
            .contains(&base) =>
        {
            Kind::Array
        }
        _ if pg_sys::type_is_rowtype(base) => Kind::Composite,
        _ if base.to_u32() >= pg_sys::FirstNormalObjectId && casts == Casts::Honour => {
            let mut cast = Oid::INVALID;
            let path = pg_sys::find_coercion_pathway(
                pg_sys::JSONOID,
                base,
                pg_sys::CoercionContext::COERCION_EXPLICIT,
                &mut cast,
            );
            if path == pg_sys::CoercionPathType::COERCION_PATH_FUNC && cast != Oid::INVALID {
                Kind::Cast(function(cast))
            } else {
                Kind::Text(output())
            }
        }
        _ => Kind::Text(output()),
    }
}

/// Types whose text depends only on the value and on `shape::Settings`. Not in the list, so
/// rendered by the writer: money (lc_monetary), reg* (search_path), arrays, composites and
/// ranges (their elements may have casts to json), user-defined base types (their output
/// functions may read any setting).
unsafe fn prints_the_same_in_worker(base: Oid, kind: &Kind) -> bool {
    use pg_sys::*;
    let portable = [
        BOOLOID,
        INT2OID,
        INT4OID,
        INT8OID,
        FLOAT4OID,
        FLOAT8OID,
        NUMERICOID,
        OIDOID,
        TEXTOID,
        VARCHAROID,
        BPCHAROID,
        NAMEOID,
        CHAROID,
        JSONOID,
        JSONBOID,
        UUIDOID,
        DATEOID,
        TIMEOID,
        TIMETZOID,
        TIMESTAMPOID,
        TIMESTAMPTZOID,
        INTERVALOID,
        BYTEAOID,
        INETOID,
        CIDROID,
        MACADDROID,
        MACADDR8OID,
        BITOID,
        VARBITOID,
    ];
    match kind {
        Kind::Array | Kind::Composite | Kind::Cast(_) => false,
        _ => portable.contains(&base) || get_typtype(base) == TYPTYPE_ENUM as std::ffi::c_char,
    }
}

unsafe fn render_value(kind: &Kind, value: Datum, out: &mut Vec<u8>) {
    match kind {
        Kind::Bool => out.extend_from_slice(if value.value() != 0 {
            b"true"
        } else {
            b"false"
        }),
        Kind::Number(f) => {
            let text = output(f, value);
            if is_json_number(text) {
                out.extend_from_slice(text);
            } else {
                escape(out, text);
            }
        }
        Kind::DateTime(type_oid) => {
            let mut buf = [0 as std::ffi::c_char; pg_sys::MAXDATELEN as usize + 1];
            pg_sys::JsonEncodeDateTime(buf.as_mut_ptr(), value, *type_oid, std::ptr::null());
            out.push(b'"');
            out.extend_from_slice(CStr::from_ptr(buf.as_ptr()).to_bytes());
            out.push(b'"');
        }
        Kind::Json(f) => out.extend_from_slice(output(f, value)),
        Kind::Array => out.extend_from_slice(text_bytes(pg_sys::DirectFunctionCall1Coll(
            Some(array_to_json),
            Oid::INVALID,
            value,
        ))),
        Kind::Composite => out.extend_from_slice(text_bytes(pg_sys::DirectFunctionCall1Coll(
            Some(row_to_json),
            Oid::INVALID,
            value,
        ))),
        Kind::Cast(f) => {
            let f = &**f as *const pg_sys::FmgrInfo as *mut pg_sys::FmgrInfo;
            out.extend_from_slice(text_bytes(pg_sys::FunctionCall1Coll(
                f,
                Oid::INVALID,
                value,
            )))
        }
        Kind::Text(f) => escape(out, output(f, value)),
    }
}

/// The output function's text (palloc'd in the per-tuple context).
unsafe fn output<'a>(f: &pg_sys::FmgrInfo, value: Datum) -> &'a [u8] {
    let f = f as *const pg_sys::FmgrInfo as *mut pg_sys::FmgrInfo;
    CStr::from_ptr(pg_sys::OutputFunctionCall(f, value)).to_bytes()
}

unsafe fn text_bytes<'a>(datum: Datum) -> &'a [u8] {
    pgrx::varlena::varlena_to_byte_slice(pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr()))
}

/// json.c's escape_json: a quoted string with \b \f \n \r \t \" \\ escaped and other control
/// characters as \u00XX (lower-case hex); every other byte, UTF-8 included, as it is.
pub fn escape(out: &mut Vec<u8>, text: &[u8]) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in text.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\x08' => b"\\b",
            b'\x0c' => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ],
            _ => continue,
        };
        out.extend_from_slice(&text[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&text[start..]);
    out.push(b'"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// JSON's number grammar, as PostgreSQL's IsValidJsonNumber applies it:
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
fn is_json_number(s: &[u8]) -> bool {
    let digits = |i: usize| s[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut i = usize::from(s.first() == Some(&b'-'));
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(i),
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        let n = digits(i + 1);
        if n == 0 {
            return false;
        }
        i += 1 + n;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = digits(i);
        if n == 0 {
            return false;
        }
        i += n;
    }
    i == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_are_recognized_as_postgres_does() {
        for ok in [
            "0",
            "-0",
            "12",
            "-1.5",
            "1e+100",
            "2.5E-07",
            "123456789012345678901234567890.000000001",
        ] {
            assert!(is_json_number(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "NaN",
            "Infinity",
            "-Infinity",
            "",
            "-",
            "01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "1 ",
        ] {
            assert!(!is_json_number(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn strings_are_escaped_as_escape_json_does() {
        let mut out = Vec::new();
        escape(&mut out, "a\"b\\c\n\t\r\x08\x0c\x01\x1f é \x7f".as_bytes());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001f é \x7f\""
        );
    }
}
