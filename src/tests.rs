//! In-process tests of the SQL surface (`cargo pgrx test`).
use pgrx::prelude::*;

#[pg_test]
fn watch_and_list() {
    Spi::run("CREATE TABLE t_basic (id int primary key, v text)").unwrap();
    Spi::run("SELECT realtime_watch('t_basic')").unwrap();
    let events = Spi::get_one::<Vec<String>>("SELECT events FROM realtime_watched() WHERE tbl = 't_basic'::regclass").unwrap();
    assert_eq!(events, Some(vec!["INSERT".into(), "UPDATE".into(), "DELETE".into(), "TRUNCATE".into()]));
}
