//! The shape of rows whose rendering is left to the worker: their tuple descriptor, and the
//! writer's session settings that change how values print (time zone, DateStyle,
//! IntervalStyle, extra_float_digits, bytea_output). The writer records it once per statement;
//! the worker rebuilds the descriptor and applies the settings, so that it prints the raw
//! tuples exactly as row_to_json would have in the writer's session.
//!
//! Layout: tz len u16 + bytes | DateStyle i32 | DateOrder i32 | IntervalStyle i32 |
//!         extra_float_digits i32 | bytea_output i32 | natts u16 |
//!         natts × (name len u16 + bytes | type oid u32 | attlen i16 | attbyval u8 |
//!                  attalign u8 | attisdropped u8)

use crate::event::{put_name, Reader};
use pgrx::pg_sys;
use std::ffi::{c_int, CStr, CString};

use crate::pg::bytea_output;

/// Session settings that change the text of values rendered by the worker.
#[derive(Debug, PartialEq)]
pub struct Settings {
    time_zone: CString,
    date_style: i32,
    date_order: i32,
    interval_style: i32,
    extra_float_digits: i32,
    bytea_output: i32,
}

impl Settings {
    /// This backend's current settings.
    pub fn current() -> Settings {
        // SAFETY: reads the session's settings on its own thread.
        unsafe {
            let tz = pg_sys::pg_get_timezone_name(pg_sys::session_timezone);
            Settings {
                time_zone: CStr::from_ptr(tz).to_owned(),
                date_style: pg_sys::DateStyle,
                date_order: pg_sys::DateOrder,
                interval_style: pg_sys::IntervalStyle,
                extra_float_digits: pg_sys::extra_float_digits,
                bytea_output,
            }
        }
    }

    /// Make these the backend's settings (the variables behind the GUCs, not the GUCs: they
    /// are restored when rendering is done). Fails on a time zone this server does not know.
    pub fn apply(&self) -> Result<(), crate::render::RenderError> {
        // SAFETY: writes the session's settings on its own thread; pg_tzset's result is checked before use.
        unsafe {
            let tz = pg_sys::pg_tzset(self.time_zone.as_ptr());
            if tz.is_null() {
                return Err(crate::render::RenderError::UnknownTimeZone(
                    self.time_zone.clone(),
                ));
            }
            pg_sys::session_timezone = tz;
            pg_sys::DateStyle = self.date_style;
            pg_sys::DateOrder = self.date_order;
            pg_sys::IntervalStyle = self.interval_style;
            pg_sys::extra_float_digits = self.extra_float_digits;
            bytea_output = self.bytea_output;
        }
        Ok(())
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_name(out, self.time_zone.as_bytes());
        for v in [
            self.date_style,
            self.date_order,
            self.interval_style,
            self.extra_float_digits,
            self.bytea_output,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(r: &mut Reader) -> Option<Settings> {
        let n = r.u16()? as usize;
        let time_zone = CString::new(r.take(n)?).ok()?;
        let mut int = || Some(r.u32()? as i32);
        Some(Settings {
            time_zone,
            date_style: int()?,
            date_order: int()?,
            interval_style: int()?,
            extra_float_digits: int()?,
            bytea_output: int()?,
        })
    }
}

/// A relation's columns as the shape records them; built once per relation by the writer.
pub fn describe(desc: pg_sys::TupleDesc) -> Vec<u8> {
    let mut out = Vec::new();
    // SAFETY: `desc` is a valid tuple descriptor; attributes are read within natts.
    unsafe {
        let natts = (*desc).natts as usize;
        out.extend_from_slice(&(natts as u16).to_le_bytes());
        for a in crate::pg::versions::attributes(desc) {
            put_name(&mut out, CStr::from_ptr(a.attname.data.as_ptr()).to_bytes());
            out.extend_from_slice(&a.atttypid.to_u32().to_le_bytes());
            out.extend_from_slice(&a.attlen.to_le_bytes());
            out.extend_from_slice(&[a.attbyval as u8, a.attalign as u8, a.attisdropped as u8]);
        }
    }
    out
}

/// The shape of the rows a statement is about to capture: the current settings, then `columns`
/// (from `describe`).
pub fn encode(columns: &[u8], out: &mut Vec<u8>) {
    Settings::current().encode(out);
    out.extend_from_slice(columns);
}

/// Read a shape back: its settings, and its descriptor allocated in the current memory context.
pub fn decode(bytes: &[u8]) -> Option<(Settings, pg_sys::TupleDesc)> {
    let mut r = Reader::new(bytes);
    let settings = Settings::decode(&mut r)?;
    let natts = r.u16()? as usize;
    // SAFETY: allocates a descriptor in the current memory context.
    let desc = unsafe { pg_sys::CreateTemplateTupleDesc(natts as c_int) };
    for i in 0..natts {
        let name = r.name()?;
        let type_oid = pg_sys::Oid::from(r.u32()?);
        let len = r.u16()? as i16;
        let flags = r.take(3)?;
        if name.len() >= pg_sys::NAMEDATALEN as usize {
            return None;
        }
        // SAFETY: `i < natts`, the number of attributes the descriptor was created with.
        unsafe {
            let a = crate::pg::versions::attribute_mut(desc, i);
            *a = std::mem::zeroed();
            std::ptr::copy_nonoverlapping(
                name.as_ptr().cast(),
                a.attname.data.as_mut_ptr(),
                name.len(),
            );
            a.atttypid = type_oid;
            a.atttypmod = -1;
            a.attnum = (i + 1) as i16;
            a.attlen = len;
            a.attbyval = flags[0] != 0;
            a.attalign = flags[1] as std::ffi::c_char;
            a.attisdropped = flags[2] != 0;
            a.attstorage = b'p' as std::ffi::c_char;
            crate::pg::versions::attribute_set(desc, i);
        }
    }
    Some((settings, desc))
}
