//! Hostile input (issue "Hardening"): bodies and queries built to exhaust the stack, the parser or
//! the store. Every one gets an OperationOutcome, and the server keeps answering afterwards.

use serde_json::{json, Value};

use crate::helpers::{assert_outcome, json, spawn_app, TestApp};

/// `<Patient><extension url="http://x">` + `open`×n + `close`×n + `</extension></Patient>`.
fn deep_xml(open: &str, close: &str, n: usize) -> String {
    format!(
        r#"<Patient xmlns="http://hl7.org/fhir"><extension url="http://x">{}{}</extension></Patient>"#,
        open.repeat(n),
        close.repeat(n)
    )
}

/// Valid FHIR: `<extension url="…">` nested `n` deep, with a value at the bottom.
fn nested_extensions_xml(n: usize) -> String {
    format!(
        r#"<Patient xmlns="http://hl7.org/fhir">{}<valueString value="x"/>{}</Patient>"#,
        r#"<extension url="http://example.org/x">"#.repeat(n),
        "</extension>".repeat(n)
    )
}

async fn send_xml(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: String,
) -> reqwest::Response {
    app.client
        .request(method, format!("{}/{path}", app.base))
        .header("content-type", "application/fhir+xml")
        .body(body)
        .send()
        .await
        .expect("request")
}

/// The server still answers (a stack overflow would have aborted the whole test process).
async fn still_alive(app: &TestApp) {
    let resp = app.get("metadata").await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn deep_xml_is_a_400_outcome_not_a_crash() {
    let app = spawn_app().await;
    // The review's reproduction: 14 KB of `<a>` nesting inside an extension.
    let body = deep_xml("<a>", "</a>", 2000);
    assert!(body.len() > 14_000);
    let oo = assert_outcome(
        send_xml(&app, reqwest::Method::POST, "Patient", body).await,
        400,
        "structure",
    )
    .await;
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .contains("nested more than"),
        "{oo}"
    );
    still_alive(&app).await;

    // Valid extension nesting, deep `code` nesting, on POST and on PUT.
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            "Patient",
            nested_extensions_xml(1_000),
        ),
        (
            reqwest::Method::POST,
            "Patient",
            nested_extensions_xml(1_500),
        ),
        (
            reqwest::Method::POST,
            "Observation",
            deep_xml("<code>", "</code>", 5_000),
        ),
        (
            reqwest::Method::PUT,
            "Patient/p1",
            nested_extensions_xml(1_500),
        ),
        (
            reqwest::Method::PUT,
            "Patient/p1",
            deep_xml("<a>", "</a>", 100_000),
        ),
    ] {
        let resp = send_xml(&app, method, path, body).await;
        assert_outcome(resp, 400, "structure").await;
        still_alive(&app).await;
    }

    // Inside a transaction Bundle.
    let bundle = format!(
        r#"<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/><entry><resource>{}</resource><request><method value="POST"/><url value="Patient"/></request></entry></Bundle>"#,
        nested_extensions_xml(1_500)
    );
    let resp = send_xml(&app, reqwest::Method::POST, "", bundle).await;
    assert_outcome(resp, 400, "structure").await;
    still_alive(&app).await;

    // Bundles nested in Bundles within the element bound: each level is a large stack frame in
    // the typed parse, so resource nesting has a bound of its own.
    let mut inner = String::from(r#"<Patient><active value="true"/></Patient>"#);
    for _ in 0..20 {
        inner = format!(
            r#"<Bundle><type value="collection"/><entry><resource>{inner}</resource></entry></Bundle>"#
        );
    }
    let doc = inner.replacen("<Bundle>", r#"<Bundle xmlns="http://hl7.org/fhir">"#, 1);
    let resp = send_xml(&app, reqwest::Method::POST, "Bundle", doc).await;
    let oo = assert_outcome(resp, 400, "structure").await;
    assert!(oo.to_string().contains("nested more than"), "{oo}");
    still_alive(&app).await;
    assert_eq!(app.count("resource").await, 0);
}

#[tokio::test]
async fn moderate_xml_nesting_still_works() {
    let app = spawn_app().await;
    // Ten levels of extensions and a narrative with nested XHTML are ordinary FHIR.
    let body = format!(
        r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><table><tbody><tr><td><p><b><i>Ann</i></b></p></td></tr></tbody></table></div></text>{}<valueString value="x"/>{}<active value="true"/></Patient>"#,
        r#"<extension url="http://example.org/x">"#.repeat(10),
        "</extension>".repeat(10)
    );
    let resp = send_xml(&app, reqwest::Method::POST, "Patient", body).await;
    assert_eq!(
        resp.status(),
        201,
        "{}",
        resp.text().await.unwrap_or_default()
    );
}

/// JSON `{"extension":[{"url":…,"extension":[…]}]}` nested `n` deep.
fn nested_extensions_json(n: usize) -> Value {
    let mut inner = json!({"url": "http://example.org/x", "valueString": "x"});
    for _ in 1..n {
        inner = json!({"url": "http://example.org/x", "extension": [inner]});
    }
    json!({"resourceType": "Patient", "extension": [inner]})
}

#[tokio::test]
async fn every_recursive_path_is_bounded() {
    let app = spawn_app().await;

    // Extension depth: as deep as JSON allows is refused with the element named, not recursed
    // into without bound.
    let resp = app.post("Patient", &nested_extensions_json(63)).await;
    let status = resp.status().as_u16();
    assert!(matches!(status, 400 | 422), "status {status}");
    still_alive(&app).await;
    // Beyond JSON's own depth limit: a syntax error.
    let text = format!(
        r#"{{"resourceType":"Patient","extension":{}{}}}"#,
        r#"[{"url":"http://x","extension":"#.repeat(200),
        "[]}]".repeat(200)
    );
    let resp = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json")
        .body(text)
        .send()
        .await
        .expect("post");
    assert_outcome(resp, 400, "structure").await;

    // Contained resources may not contain resources themselves (R4 dom-2).
    let nested = json!({"resourceType": "Patient", "contained": [
        {"resourceType": "Patient", "id": "c1", "contained": [{"resourceType": "Patient", "id": "c2"}]}
    ]});
    let resp = app.post("Patient", &nested).await;
    let status = resp.status().as_u16();
    assert!(matches!(status, 400 | 422), "status {status}");

    // Bundles nested in Bundles, as deep as JSON allows, in a transaction entry.
    let mut doc = json!({"resourceType": "Bundle", "type": "collection"});
    for _ in 0..30 {
        doc = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": doc}]});
    }
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": doc, "request": {"method": "POST", "url": "Bundle"}}
    ]});
    let resp = app.post("", &tx).await;
    let status = resp.status().as_u16();
    assert!(matches!(status, 200 | 400 | 422), "status {status}");
    still_alive(&app).await;

    // Chains deeper than the limit are refused.
    let resp = app
        .get("Observation?subject:Patient.organization.partof.partof.partof.name=x")
        .await;
    assert_outcome(resp, 400, "invalid").await;

    // `_include:iterate` over a reference cycle stops (Observations that are members of each other).
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut o = crate::helpers::observation("p1", f64::from(i));
        o["id"] = json!(format!("cyc{i}"));
        ids.push(format!("cyc{i}"));
        let resp = app.put(&format!("Observation/cyc{i}"), &o).await;
        assert!(resp.status().is_success());
    }
    for i in 0..3 {
        let mut o = crate::helpers::observation("p1", f64::from(i));
        o["id"] = json!(format!("cyc{i}"));
        o["hasMember"] = json!([{"reference": format!("Observation/cyc{}", (i + 1) % 3)}]);
        let resp = app.put(&format!("Observation/cyc{i}"), &o).await;
        assert_eq!(resp.status(), 200);
    }
    let resp = app
        .get("Observation?_id=cyc0&_include:iterate=Observation:has-member&_include=Observation:has-member")
        .await;
    assert_eq!(resp.status(), 200);
    let bundle = json(resp).await;
    let mut found: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    found.sort();
    assert_eq!(found, ids);
}

/// Every search parameter with a NUL or another control character in its name or value: a 400
/// naming the parameter, never a 500 (PostgreSQL refuses NUL in text).
#[tokio::test]
async fn control_characters_in_search_parameters_are_400() {
    let app = spawn_app().await;
    let searches = [
        "Observation?_tag=%00",
        "Observation?code=%00",
        "Patient?name=%00",
        "Observation?subject=Patient/%00",
        "Observation?_id=%00",
        "Observation?_profile=%00",
        "Observation?_security=%00",
        "ValueSet?url=%00",
        "Observation?code:text=a%00b",
        "Patient?_has:Observation:patient:code=%00",
        "Patient?name=%01",
        "Patient?family=a%1Fb",
        "Observation?subject:Patient.name=%00",
        "Observation?value-quantity=gt%00",
        "Patient?birthdate=%00",
        "Observation/_history?_since=%00",
        "Patient/x/$everything?_since=%00",
        "Observation/$stats?code=%00",
        "Observation?code%00=x",
    ];
    for q in searches {
        let resp = app.get(q).await;
        assert_eq!(resp.status(), 400, "{q}");
        let oo = json(resp).await;
        assert_eq!(oo["resourceType"], "OperationOutcome", "{q}");
        assert!(
            oo["issue"][0]["diagnostics"]
                .as_str()
                .unwrap_or("")
                .contains("control character"),
            "{q}: {oo}"
        );
    }
    // Tab, CR and LF are allowed characters of a string.
    assert_eq!(app.get("Patient?name=a%09b").await.status(), 200);
    // A conditional create with NUL in If-None-Exist, and a conditional update.
    let obs = crate::helpers::observation("p1", 60.0);
    let resp = app
        .client
        .post(format!("{}/Observation", app.base))
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "identifier=a%00b")
        .body(obs.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    assert_eq!(
        app.put("Observation?identifier=%00", &obs).await.status(),
        400
    );
    // Inside a transaction: a conditional reference with NUL.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient?identifier=a%00b"}},
        "request": {"method": "POST", "url": "Observation"}}]});
    assert_eq!(app.post("", &tx).await.status(), 400);
    assert_eq!(app.count("resource").await, 0, "nothing was written");
    still_alive(&app).await;
}

/// A resource whose strings hold a control character is 422 naming the element, and nothing is
/// stored; so is a string over the R4 limit of 1 MB.
#[tokio::test]
async fn control_characters_and_huge_strings_in_resources_are_422() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"resourceType": "Patient", "name": [{"family": "a\u{0000}b"}]}),
            "Patient.name[0].family",
        ),
        (
            json!({"resourceType": "Organization", "name": "x\u{0001}"}),
            "Organization.name",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "bad\u{001b}[31m"}}),
            "Observation.code.text",
        ),
        (
            json!({"resourceType": "Patient", "name": [{"family": "x".repeat(1024 * 1024 + 1)}]}),
            "Patient.name[0].family",
        ),
    ];
    for (body, element) in cases {
        let rt = body["resourceType"].as_str().expect("type").to_owned();
        let oo = assert_outcome(app.post(&rt, &body).await, 422, "value").await;
        let found = oo["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["expression"][0] == element);
        assert!(found, "{element}: {oo}");
    }
    // The same as XML, where the character arrives as a character reference.
    let xml =
        r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="a&#1;b"/></name></Patient>"#;
    let resp = send_xml(&app, reqwest::Method::POST, "Patient", xml.to_owned()).await;
    assert!(
        [400, 422].contains(&resp.status().as_u16()),
        "{}",
        resp.status()
    );
    // Tab, CR and LF are fine; and a string just under the limit is stored.
    let ok = json!({"resourceType": "Patient", "name": [{"family": "a\tb", "text": "l1\r\nl2"}]});
    assert_eq!(app.post("Patient", &ok).await.status(), 201);
    assert_eq!(app.count("resource").await, 1, "only the valid Patient");
    still_alive(&app).await;
}

/// The transaction-size refusal names its limit in entries; `_include`s per search are bounded.
#[tokio::test]
async fn limits_name_what_they_limit() {
    let app = spawn_app().await;
    let entry = json!({"request": {"method": "GET", "url": "Patient/x"}});
    let entries: Vec<Value> = (0..10_001).map(|_| entry.clone()).collect();
    let big = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    let resp = app.post("", &big).await;
    assert_eq!(resp.status(), 413);
    let oo = json(resp).await;
    let text = oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(text.contains("10000 entries"), "{text}");
    assert!(!text.contains("bytes"), "{text}");

    let many: String = (0..11).map(|_| "&_include=Observation:patient").collect();
    let resp = app.get(&format!("Observation?code=x{many}")).await;
    assert_eq!(resp.status(), 400);
    let ten: String = (0..10).map(|_| "&_include=Observation:patient").collect();
    assert_eq!(
        app.get(&format!("Observation?code=x{ten}")).await.status(),
        200
    );
}

/// `host:port` of a test server.
fn authority(app: &TestApp) -> String {
    app.base
        .trim_start_matches("http://")
        .trim_end_matches("/fhir")
        .to_owned()
}

/// Reads from `stream` until the server closes it or `within` passes; what it sent.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A client that sends its headers one byte at a time (slowloris) is cut off after the header
/// timeout; one that sends less body than its `Content-Length` gets 408 within seconds.
#[tokio::test]
async fn slow_clients_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let app = crate::helpers::spawn_app_with(|a| a.header_timeout_secs = 2).await;
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(authority(&app))
        .await
        .expect("connect");
    slow.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // One header byte a second, never finishing the headers.
    let drip = async {
        for _ in 0..20 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if slow.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(6), drip)
        .await
        .ok();
    let closed = read_until_closed(&mut slow, std::time::Duration::from_secs(2)).await;
    assert!(closed.is_some(), "the slow connection is still open");
    assert!(started.elapsed() < std::time::Duration::from_secs(9));

    // A body shorter than its Content-Length: 408 after the body timeout, not 503 after 120 s.
    let token = crate::helpers::mint(&app.state, "system/*.cruds", None);
    let mut short = tokio::net::TcpStream::connect(authority(&app))
        .await
        .expect("connect");
    let head = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\nContent-Length: 1000\r\n\r\n{{\"resourceType\":"
    );
    short.write_all(head.as_bytes()).await.expect("write");
    let started = std::time::Instant::now();
    let answer = read_until_closed(&mut short, std::time::Duration::from_secs(20))
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("OperationOutcome"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    still_alive(&app).await;
}

/// One address may hold only so many connections; the next ones are closed on arrival, and a
/// freed place is usable again.
#[tokio::test]
async fn connections_per_address_are_capped() {
    let app = crate::helpers::spawn_app_with(|a| a.max_connections_per_address = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            tokio::net::TcpStream::connect(authority(&app))
                .await
                .expect("connect"),
        );
    }
    // Let the server accept them.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut extra = tokio::net::TcpStream::connect(authority(&app))
        .await
        .expect("connect");
    let closed = read_until_closed(&mut extra, std::time::Duration::from_secs(3)).await;
    assert_eq!(
        closed.as_deref(),
        Some(""),
        "the fourth connection is closed unanswered"
    );
    held.pop();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let fresh = reqwest::Client::new();
    let resp = fresh
        .get(format!("{}/metadata", app.base))
        .send()
        .await
        .expect("a freed place is usable");
    assert_eq!(resp.status(), 200);
}

/// Every error is an OperationOutcome in the format asked for, and an early refusal of a request
/// with a body closes the connection cleanly.
#[tokio::test]
async fn every_error_is_an_outcome_in_the_negotiated_format() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    // An undecodable path.
    let resp = app.get("Patient/%FF%FE").await;
    assert!(resp.status().is_client_error());
    let ct = resp.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    assert!(ct.starts_with("application/fhir+json"), "{ct}");
    assert_eq!(json(resp).await["resourceType"], "OperationOutcome");
    // An over-long URL: 414 with a body.
    let long = format!("Patient?name={}", "a".repeat(40_000));
    let oo = assert_outcome(app.get(&long).await, 414, "too-costly").await;
    assert!(oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("")
        .contains("_search"));
    // Past hyper's own limit (64 KiB), which would answer 414 or 431 with no body.
    for n in [200_000usize, 600_000] {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(authority(&app))
            .await
            .expect("connect");
        let req = format!(
            "GET /fhir/Patient?name={} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(n)
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let answer = read_until_closed(&mut s, std::time::Duration::from_secs(10))
            .await
            .expect("answered and closed");
        assert!(answer.starts_with("HTTP/1.1 414"), "{n}: {answer}");
        assert!(answer.contains("OperationOutcome"), "{n}: {answer}");
    }
    // XML clients get XML errors: 404, 400 and 422 alike.
    for (path, accept, status) in [
        ("Patient/nope", Some("application/fhir+xml"), 404),
        ("Patient/nope?_format=xml", None, 404),
        ("Observation?_count=many", Some("application/fhir+xml"), 400),
        (
            "no/such/endpoint/here/at/all",
            Some("application/fhir+xml"),
            404,
        ),
    ] {
        let mut req = app.client.get(format!("{}/{path}", app.base));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let resp = req.send().await.expect("get");
        assert_eq!(resp.status(), status, "{path}");
        let ct = resp.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .to_owned();
        assert!(ct.starts_with("application/fhir+xml"), "{path}: {ct}");
        let text = resp.text().await.expect("text");
        assert!(text.contains("<OperationOutcome"), "{path}: {text}");
    }
    let bad = json!({"resourceType": "Patient", "gender": "sometimes"});
    let resp = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("accept", "application/fhir+xml")
        .header("content-type", "application/fhir+json")
        .body(bad.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 422);
    assert!(resp
        .text()
        .await
        .expect("text")
        .contains("<OperationOutcome"));
    // A 405 to a request with a body says Connection: close, and the next request on a new
    // connection works.
    let mut s = tokio::net::TcpStream::connect(authority(&app))
        .await
        .expect("connect");
    s.write_all(b"DELETE /fhir HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("write");
    let answer = read_until_closed(&mut s, std::time::Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    still_alive(&app).await;
}

/// A write sent again with the same `Idempotency-Key` gets the first answer back and writes
/// nothing; the same key with another request is 422; keys belong to their caller.
#[tokio::test]
async fn an_idempotency_key_makes_a_retried_write_harmless() {
    let app = spawn_app().await;
    let obs = crate::helpers::observation("p1", 61.0);
    let post = |path: &'static str, body: Value, key: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(format!("{}/{path}", app.base))
                .header("content-type", "application/fhir+json")
                .header("idempotency-key", key)
                .body(body.to_string())
                .send()
                .await
                .expect("post")
        }
    };
    let first = post("Observation", obs.clone(), "k-create-1").await;
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].clone();
    let again = post("Observation", obs.clone(), "k-create-1").await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["location"], location);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(json(again).await["id"], json(first).await["id"]);
    assert_eq!(
        app.count("resource where resource_type = 'Observation'")
            .await,
        1
    );
    // The same key for something else.
    let other = crate::helpers::observation("p1", 99.0);
    assert_outcome(
        post("Observation", other, "k-create-1").await,
        422,
        "conflict",
    )
    .await;

    // A transaction, sent twice: one set of writes, the same answer.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": obs.clone(), "request": {"method": "POST", "url": "Observation"}},
        {"resource": crate::helpers::observation("p1", 62.0), "request": {"method": "POST", "url": "Observation"}}]});
    let a = post("", tx.clone(), "k-tx-1").await;
    assert_eq!(a.status(), 200);
    let b = post("", tx.clone(), "k-tx-1").await;
    assert_eq!(b.status(), 200);
    assert_eq!(json(a).await["entry"], json(b).await["entry"]);
    assert_eq!(
        app.count("resource where resource_type = 'Observation'")
            .await,
        3
    );

    // A write that committed but whose answer was lost is not written again.
    sqlx::query("update idempotent_request set status = null, body = null where key = 'k-tx-1'")
        .execute(&app.pool)
        .await
        .expect("forget");
    assert_outcome(post("", tx.clone(), "k-tx-1").await, 409, "conflict").await;
    assert_eq!(
        app.count("resource where resource_type = 'Observation'")
            .await,
        3
    );

    // Another caller's key of the same name is its own.
    let token = crate::helpers::mint(&app.state, "system/Observation.cruds", None);
    let resp = reqwest::Client::new()
        .post(format!("{}/Observation", app.base))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .header("idempotency-key", "k-create-1")
        .body(obs.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().get("idempotent-replayed").is_none());
    // Malformed keys.
    for bad in ["", "has space", &"x".repeat(256)] {
        let resp = app
            .client
            .post(format!("{}/Observation", app.base))
            .header("content-type", "application/fhir+json")
            .header("idempotency-key", bad)
            .body(obs.to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 400, "{bad:?}");
    }
    // Stored answers are sealed: nothing of the resource is readable in the table.
    let bodies: Vec<Option<String>> = sqlx::query_scalar("select body from idempotent_request")
        .fetch_all(&app.pool)
        .await
        .expect("bodies");
    for b in bodies.into_iter().flatten() {
        assert!(!b.contains("8867-4") && !b.contains("Observation"), "{b}");
    }
}

/// When the request's own audit event cannot be stored after a write committed (with its events,
/// in its transaction), the answer follows the commit: never a "retry later" that would write
/// everything twice. Reads are still refused without their event.
#[tokio::test]
async fn a_committed_write_is_answered_as_committed() {
    let app = spawn_app().await;
    for sql in [
        "create or replace function test_refuse() returns trigger language plpgsql as $$ begin raise exception 'audit storage is broken'; end; $$",
        "create trigger test_refuse before insert on audit_log for each row execute function test_refuse()",
    ] {
        sqlx::query(sql).execute(&app.pool).await.expect("break");
    }
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": crate::helpers::observation("p1", 70.0), "request": {"method": "POST", "url": "Observation"}}]});
    let resp = app.post("", &tx).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.count("resource where resource_type = 'Observation'")
            .await,
        1
    );
    // Its entries' events are in the inbox, written with the transaction.
    assert!(app.count("audit_inbox").await >= 1);
    assert_eq!(app.get("Observation?_count=1").await.status(), 503);
}

/// Found by the fuzzer: an XML namespace that is not UTF-8 made the XML parser behind fhirbolt
/// panic (a 500). Now it is a 400 like any other malformed body.
#[tokio::test]
async fn xml_that_is_not_utf8_is_a_400() {
    let app = spawn_app().await;
    let mut body = b"<Patient xmlns=\"http://hl7.org/fhir".to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(b"\"><id value=\"a\"/></Patient>");
    let resp = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+xml")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    still_alive(&app).await;
}

/// The parsers behind the server, fuzzed over HTTP with the same mutation engine as
/// `fhirgate-fuzz`: search queries, paging cursors and bearer tokens. No input may get a 5xx or
/// stop the server.
#[tokio::test]
async fn fuzzed_queries_cursors_and_tokens_never_fail_the_server() {
    use rand::SeedableRng;
    let app = spawn_app().await;
    for v in [60.0, 61.0, 62.0] {
        assert_eq!(
            app.post("Observation", &crate::helpers::observation("p1", v))
                .await
                .status(),
            201
        );
    }
    let runs: usize = std::env::var("FHIRGATE_FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let check = |path: String, status: u16| {
        assert!(status < 500, "{status} for {path}");
    };
    // Search queries.
    let queries: Vec<Vec<u8>> = [
        "Observation?code=http://loinc.org|8867-4&date=ge2024-01-01&_sort=-date&_count=2",
        "Observation?subject:Patient.name=ann&value-quantity=gt60|http://unitsofmeasure.org|/min",
        "Patient?_has:Observation:patient:code=8867-4&_include=Patient:organization&_total=accurate",
        "Observation?combo-code-value-quantity=8867-4$gt60&_summary=count&_elements=code,subject",
        "Observation?_lastUpdated=lt2030&_id=a,b,c&code:not=x&category:missing=false&_revinclude=Provenance:target",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for _ in 0..runs {
        let base = &queries[rand::Rng::gen_range(&mut rng, 0..queries.len())];
        let q = fhirgate::fuzz::mutate(&mut rng, base, &queries);
        let q: String = String::from_utf8_lossy(&q)
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '#')
            .collect();
        let resp = app.client.get(format!("{}/{q}", app.base)).send().await;
        if let Ok(resp) = resp {
            check(q, resp.status().as_u16());
        }
    }
    // Paging cursors from a real next link.
    let page = json(app.get("Observation?_count=1").await).await;
    let next = page["link"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .expect("next link")
        .to_owned();
    let cursor = next.split("_cursor=").nth(1).expect("cursor").to_owned();
    let seeds = vec![cursor.clone().into_bytes()];
    for _ in 0..runs {
        let c = fhirgate::fuzz::mutate(&mut rng, cursor.as_bytes(), &seeds);
        let c: String = form_urlencoded::byte_serialize(&c).collect();
        let path = format!("Observation?_count=1&_cursor={c}");
        let status = app.get(&path).await.status().as_u16();
        check(path, status);
    }
    // Bearer tokens: a valid one, mutated.
    let token = crate::helpers::mint(&app.state, "system/*.rs", None);
    let seeds = vec![token.clone().into_bytes()];
    for _ in 0..runs {
        let t = fhirgate::fuzz::mutate(&mut rng, token.as_bytes(), &seeds);
        let t: String = String::from_utf8_lossy(&t)
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .collect();
        let resp = reqwest::Client::new()
            .get(format!("{}/Observation?_count=1", app.base))
            .header("authorization", format!("Bearer {t}"))
            .send()
            .await
            .expect("get");
        check(format!("token {t}"), resp.status().as_u16());
    }
    still_alive(&app).await;
}

/// `/` is a landing page without data or token; any other unknown URL is still a 404
/// OperationOutcome.
#[tokio::test]
async fn the_landing_page_links_the_way_in_and_unknown_urls_stay_404() {
    let app = spawn_app().await;
    let root = app.base.trim_end_matches("/fhir").to_owned();
    let resp = app
        .anonymous
        .get(format!("{root}/"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/html"));
    let html = resp.text().await.expect("text");
    for link in [
        "/fhir/metadata",
        "/.well-known/smart-configuration",
        "/auth/login",
        "/account/access",
        env!("CARGO_PKG_VERSION"),
        "ready",
    ] {
        assert!(html.contains(link), "{link}: {html}");
    }
    let resp = app
        .anonymous
        .get(format!("{root}/nope"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 404);
    assert_eq!(json(resp).await["resourceType"], "OperationOutcome");
}
