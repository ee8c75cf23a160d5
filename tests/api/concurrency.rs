//! Races: conditional create and If-Match under concurrency (security-test-plan F5, F6).

use serde_json::json;

use crate::helpers::{json, spawn_app};

#[tokio::test]
async fn fifty_parallel_conditional_creates_make_one_resource() {
    let app = spawn_app().await;
    for round in 0..3 {
        let ident = format!("race-{round}");
        let body = json!({"resourceType": "Patient", "identifier": [{"system": "urn:race", "value": ident}]}).to_string();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let client = app.client.clone();
            let url = format!("{}/Patient", app.base);
            let body = body.clone();
            let criteria = format!("identifier=urn:race|{ident}");
            tasks.push(tokio::spawn(async move {
                let resp = client
                    .post(url)
                    .header("content-type", "application/fhir+json")
                    .header("if-none-exist", criteria)
                    .body(body)
                    .send()
                    .await
                    .expect("post");
                let status = resp.status().as_u16();
                (
                    status,
                    json(resp).await["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            }));
        }
        let mut created = 0;
        let mut ok = 0;
        let mut ids = std::collections::HashSet::new();
        for t in tasks {
            let (status, id) = t.await.expect("task");
            match status {
                201 => created += 1,
                200 => ok += 1,
                other => panic!("unexpected status {other}"),
            }
            ids.insert(id);
        }
        assert_eq!((created, ok), (1, 49), "round {round}");
        assert_eq!(ids.len(), 1, "all answers point at one resource");
    }
    assert_eq!(
        app.count("resource where resource_type = 'Patient'").await,
        3
    );
}

#[tokio::test]
async fn ten_parallel_if_match_updates_one_wins() {
    let app = spawn_app().await;
    app.put(
        "Patient/contended",
        &json!({"resourceType": "Patient", "id": "contended"}),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let client = app.client.clone();
        let url = format!("{}/Patient/contended", app.base);
        tasks.push(tokio::spawn(async move {
            let body = json!({"resourceType": "Patient", "id": "contended", "name": [{"family": format!("w{i}")}]});
            client
                .put(url)
                .header("content-type", "application/fhir+json")
                .header("if-match", "W/\"1\"")
                .body(body.to_string())
                .send()
                .await
                .expect("put")
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412, 412, 412, 412, 412, 412, 412, 412, 412]);
    assert_eq!(app.count("resource_version").await, 2);
}

#[tokio::test]
async fn parallel_updates_without_if_match_keep_every_version() {
    let app = spawn_app().await;
    app.put(
        "Patient/busy",
        &json!({"resourceType": "Patient", "id": "busy"}),
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = app.client.clone();
        let url = format!("{}/Patient/busy", app.base);
        tasks.push(tokio::spawn(async move {
            client
                .put(url)
                .header("content-type", "application/fhir+json")
                .body(json!({"resourceType": "Patient", "id": "busy"}).to_string())
                .send()
                .await
                .expect("put")
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    let versions: Vec<i32> = sqlx::query_scalar(
        "select version_id from resource_version where id = 'busy' order by version_id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("v");
    assert_eq!(versions, (1..=21).collect::<Vec<_>>());
}

#[tokio::test]
async fn parallel_update_as_create_of_one_id_makes_one_version_one() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = app.client.clone();
        let url = format!("{}/Patient/newcomer", app.base);
        tasks.push(tokio::spawn(async move {
            let resp = client
                .put(url)
                .header("content-type", "application/fhir+json")
                .body(json!({"resourceType": "Patient", "id": "newcomer"}).to_string())
                .send()
                .await
                .expect("put");
            let status = resp.status().as_u16();
            let body = json(resp).await;
            if status == 409 {
                assert_eq!(body["issue"][0]["code"], "conflict", "{body}");
            }
            status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 201, 409].contains(s)),
        "{statuses:?}"
    );
    let versions: Vec<i32> = sqlx::query_scalar(
        "select version_id from resource_version where id = 'newcomer' order by version_id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("v");
    let expected: Vec<i32> =
        (1..=i32::try_from(statuses.iter().filter(|s| **s != 409).count()).expect("n")).collect();
    assert_eq!(
        versions, expected,
        "contiguous versions, no lost or duplicated write"
    );
}

#[tokio::test]
async fn a_read_only_database_gives_503_for_writes_and_unauditable_reads() {
    let app = spawn_app().await;
    assert_eq!(
        app.put(
            "Patient/ro",
            &json!({"resourceType": "Patient", "id": "ro"})
        )
        .await
        .status(),
        201
    );
    let admin = sqlx::PgPool::connect_with(crate::helpers::admin_options())
        .await
        .expect("admin");
    sqlx::query(&format!(
        "alter database {} set default_transaction_read_only = on",
        app.db_name
    ))
    .execute(&admin)
    .await
    .expect("alter");
    sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()")
        .bind(&app.db_name)
        .execute(&admin)
        .await
        .expect("terminate");
    // The pool notices the dropped connections and reconnects; writes then fail cleanly.
    let mut status = 0;
    for _ in 0..5 {
        let resp = app
            .put(
                "Patient/ro",
                &json!({"resourceType": "Patient", "id": "ro", "active": true}),
            )
            .await;
        status = resp.status().as_u16();
        if status == 503 {
            let retry = resp.headers().get("retry-after").is_some();
            let oo = json(resp).await;
            assert_eq!(oo["issue"][0]["code"], "transient", "{oo}");
            assert!(retry);
            break;
        }
    }
    assert_eq!(status, 503);
    // No audit, no access: a read whose event cannot be stored is refused the same way.
    let resp = app.get("Patient/ro").await;
    assert_eq!(resp.status(), 503);
    assert!(!json(resp).await.to_string().contains("\"active\""));
    sqlx::query(&format!(
        "alter database {} reset default_transaction_read_only",
        app.db_name
    ))
    .execute(&admin)
    .await
    .expect("reset");
    assert_eq!(app.count("resource_version").await, 1);
}
