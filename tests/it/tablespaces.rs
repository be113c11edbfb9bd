//! Tablespaces: copied to their -T mappings, linked from pg_tblspc, verified and restored.

use crate::harness::*;

#[test]
fn two_tablespaces_mapped_elsewhere_restore() {
    let c = Cluster::new();
    let loc1 = c.path("ts one");
    let loc2 = c.path("ts =two");
    for l in [&loc1, &loc2] {
        std::fs::create_dir(l).unwrap();
        chown_pg(l);
    }
    let mut cl = c.client();
    cl.batch_execute(&format!("CREATE TABLESPACE one LOCATION '{}'", loc1.display())).unwrap();
    cl.batch_execute(&format!("CREATE TABLESPACE two LOCATION '{}'", loc2.display())).unwrap();
    cl.batch_execute(
        "CREATE TABLE t1 TABLESPACE one AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g; \
         CREATE INDEX ON t1 (v) TABLESPACE two; \
         CREATE TABLE t2 TABLESPACE two AS SELECT g AS id FROM generate_series(1, 5000) g; \
         CREATE UNLOGGED TABLE u1 TABLESPACE one AS SELECT 1 AS x",
    )
    .unwrap();
    let new1 = c.path("mapped one");
    let new2 = c.path("mapped =two");
    let dest = c.path("backup");
    let m1 = format!("{}={}", loc1.display(), new1.display());
    let m2 = format!(
        "{}={}",
        loc2.display().to_string().replace('=', "\\="),
        new2.display().to_string().replace('=', "\\=")
    );
    let out = pgbb_run(&["-c", "fast", "-T", &m1, "-T", &m2, &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dest.join("tablespace_map").exists(), "plain format: links, no map");
    let oids: Vec<u32> = cl
        .query("SELECT oid FROM pg_tablespace WHERE spcname IN ('one', 'two') ORDER BY spcname", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(std::fs::read_link(dest.join("pg_tblspc").join(oids[0].to_string())).unwrap(), new1);
    assert_eq!(std::fs::read_link(dest.join("pg_tblspc").join(oids[1].to_string())).unwrap(), new2);
    // The unlogged table's main fork stayed behind; its init fork came.
    let u1: String = cl.query_one("SELECT pg_relation_filepath('u1')", &[]).unwrap().get(0);
    assert!(!dest.join(&u1).exists() && dest.join(format!("{u1}_init")).exists());
    chown_pg(&new1);
    chown_pg(&new2);
    let copy = verify_restore(
        &dest,
        &Expect {
            pgbench: false,
            databases: vec!["postgres".into()],
            unlogged: vec![("postgres".into(), "u1".into())],
            absent: vec![],
        },
    );
    let mut cc = copy.client();
    assert_eq!(query_i64(&mut cc, "SELECT count(*) FROM t1"), 20000);
    assert_eq!(query_i64(&mut cc, "SELECT count(*) FROM t2"), 5000);
    let loc: String = cc
        .query_one("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'two'", &[])
        .unwrap()
        .get(0);
    assert_eq!(loc, new2.display().to_string());
}
