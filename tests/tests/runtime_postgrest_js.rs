//! Clients nobody here wrote: `@supabase/postgrest-js` performs selects with filters and
//! embedding, inserts, updates, upserts and deletes against Sluice, and an independent OpenAPI
//! 3.1 validator (`@seriousme/openapi-schema-validator`) checks the document, on every engine,
//! with the fixture's admin key.
//!
//! Needs `node` and `npm` and, the first time, access to the npm registry: the packages are
//! installed, pinned, under the cargo target directory. Without them the test fails, naming
//! what is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_crds::dataapi::Engine;
use sluice_tests::runtime::start;

const PACKAGES: [&str; 2] = [
    "@supabase/postgrest-js@2.119.1",
    "@seriousme/openapi-schema-validator@2.11.0",
];

const SCRIPT: &str = r#"
import assert from 'node:assert/strict'
import { PostgrestClient } from '@supabase/postgrest-js'
import { Validator } from '@seriousme/openapi-schema-validator'

const [base, key] = process.argv.slice(2)
const headers = { 'X-API-Key': key }
const db = new PostgrestClient(base, { headers })
const ok = (label, result) => {
  assert.equal(result.error, null, `${label}: ${JSON.stringify(result.error)}`)
  return result
}
const num = (value) => Number(value)

let r = ok('select with filters and a to-many embed', await db.from('customers')
  .select('id, name, orders(id, total)').in('id', [1, 3]).order('id'))
assert.deepEqual(r.data.map((c) => [c.id, c.orders.map((o) => [o.id, num(o.total)])]), [[1, [[10, 99.9], [11, 15]]], [3, []]])

r = ok('to-one embed with single()', await db.from('orders').select('id, buyer:customers(name)').eq('id', 12).single())
assert.deepEqual(r.data, { id: 12, buyer: { name: 'Brian' } })

r = ok('or, ilike, is and count', await db.from('customers').select('id', { count: 'exact' })
  .or('name.ilike.b*,email.is.null').order('id'))
assert.deepEqual(r.data, [{ id: 2 }])
assert.equal(r.count, 1)

r = ok('insert', await db.from('customers').insert({ id: 40, name: 'Js', vip: true, balance: 1.25 }).select('id, name, vip'))
assert.deepEqual(r.data, [{ id: 40, name: 'Js', vip: true }])

ok('insert many with different keys', await db.from('customers').insert([{ id: 41, name: 'A' }, { id: 42, name: 'B', email: 'b@example.com' }]))

r = ok('update', await db.from('customers').update({ name: 'Js2' }).eq('id', 40).select('id, name'))
assert.deepEqual(r.data, [{ id: 40, name: 'Js2' }])

r = ok('upsert', await db.from('customers').upsert([{ id: 40, name: 'Js3' }, { id: 43, name: 'C' }]).select('id, name').order('id'))
assert.deepEqual(r.data.map((c) => c.name).sort(), ['C', 'Js3'])

r = ok('delete', await db.from('customers').delete().in('id', [40, 41, 42, 43]).select('id'))
assert.deepEqual(r.data.map((c) => c.id).sort(), [40, 41, 42, 43])

r = ok('maybeSingle of nothing', await db.from('customers').select('id').eq('id', 40).maybeSingle())
assert.equal(r.data, null)

r = await db.from('customers').select('nope')
assert.equal(r.status, 400)
assert.equal(r.error.code, 'unknown_column')

const document = await (await fetch(`${base}/openapi.json`, { headers })).json()
const validation = await new Validator().validate(document)
assert.ok(validation.valid, `OpenAPI document invalid: ${JSON.stringify(validation.errors)}`)
console.log('postgrest-js and the OpenAPI validator are satisfied')
"#;

fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}; install Node.js 18+ and npm"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed ({}):\n{text}", output.status);
    text
}

/// Serialises the one-time install between the tests of this file, which run in parallel.
static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Installs the pinned packages once into a folder under the target directory.
fn node_project() -> PathBuf {
    let _installing = INSTALL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("postgrest-js");
    std::fs::create_dir_all(&dir).expect("create the Node project folder");
    let marker = dir.join(format!("installed-{}", PACKAGES.join("+").replace(['/', '@'], "_")));
    if !marker.exists() {
        std::fs::write(dir.join("package.json"), "{\"private\":true,\"type\":\"module\"}").expect("write package.json");
        run(
            Command::new("npm")
                .current_dir(&dir)
                .args(["install", "--no-audit", "--no-fund", "--no-save"])
                .args(PACKAGES),
            "installing the Node packages (needs the npm registry once)",
        );
        std::fs::write(&marker, "").expect("mark the install");
    }
    std::fs::write(dir.join("check.mjs"), SCRIPT).expect("write the client script");
    dir
}

async fn postgrest_js_is_satisfied(engine: Engine) {
    let dir = tokio::task::spawn_blocking(node_project).await.expect("install task");
    let api = start(engine).await;
    let base = format!("http://{}{}", api.address, api.base);
    let output = tokio::process::Command::new("node")
        .current_dir(&dir)
        .arg("check.mjs")
        .arg(&base)
        .arg(api.key("admin"))
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run node: {e}; install Node.js 18+"));
    api.cleanup().await;
    assert!(
        output.status.success(),
        "{engine:?}: postgrest-js run failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn postgrest_js_works_against_postgres() {
    postgrest_js_is_satisfied(Engine::Postgres).await;
}

#[tokio::test]
async fn postgrest_js_works_against_mariadb() {
    postgrest_js_is_satisfied(Engine::Mysql).await;
}

#[tokio::test]
async fn postgrest_js_works_against_sqlite() {
    postgrest_js_is_satisfied(Engine::Sqlite).await;
}
