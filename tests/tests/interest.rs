//! Expressions of interest between whole nodes: region B responds to region A's offer while A's
//! node is down; B's outbox keeps the expression across a restart of B and delivers it when A
//! is back; A accepts and the contact details cross over, one side to the other only; A records
//! the outcome, which replicates; a third node never sees any of it; forged answers are refused.

use std::time::Duration;

use anyhow::Context as _;
use kim_node::interest::{AnswerInput, InterestInput, OutcomeInput};
use kim_protocol::direct::{Answer, ContactDetails, DirectMessage, Signed};
use kim_tests::cluster::{Cluster, ClusterOptions};
use kim_tests::sample_input;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

fn contact(person: &str) -> ContactDetails {
    ContactDetails {
        person: person.into(),
        organisation: format!("{person}'s agency"),
        email: format!("{}@example.org", person.to_lowercase().replace(' ', ".")),
        phone: "+43 316 000".into(),
        note: String::new(),
    }
}

async fn wait(
    cluster: &Cluster,
    i: usize,
    what: &str,
    check: impl Fn(&kim_node::service::Service) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if check(cluster.node(i).service()?) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not after 60 s on node {i}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status_of(service: &kim_node::service::Service, id: &str) -> String {
    service.interest(id).map(|v| v.status).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interest_reaches_the_offering_region_only_across_restarts_and_contacts_cross()
-> anyhow::Result<()> {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await?;
    cluster.connect_all().await?;
    let offer = cluster
        .publish(A, "offers", sample_input("offers", "sensor-offer", 1))
        .await?;
    cluster
        .wait_converged(&cluster.all(), Duration::from_secs(30))
        .await?;
    let a_region = cluster.node(A).region();

    // A's node is down when B responds: the expression waits in B's outbox.
    cluster.stop(A).await?;
    let sent = cluster
        .node(B)
        .service()?
        .express_interest(
            a_region,
            &offer.key,
            InterestInput {
                cooperation_sought: vec![],
                message: "We build vibration sensors and look for a pilot site.".into(),
                questions: "Is the call still open?".into(),
                presentation: "SME, 40 staff".into(),
                contact: contact("Ana Novak"),
            },
        )
        .await?;
    assert_eq!(sent.status, "queued");
    let id = sent.id.clone();
    wait(&cluster, B, "a failed attempt", |s| {
        s.interest(&id)
            .is_ok_and(|v| v.attempts >= 1 && v.status == "queued")
    })
    .await?;
    // B restarts too: the outbox is durable.
    cluster.restart(B).await?;
    cluster.restart(A).await?;
    cluster.connect(B, A).await?;
    wait(&cluster, B, "delivered", |s| {
        status_of(s, &id) == "delivered"
    })
    .await?;
    wait(&cluster, A, "received", |s| status_of(s, &id) == "new").await?;
    let received = cluster.node(A).service()?.interest(&id)?;
    assert_eq!(received.direction, "incoming");
    assert_eq!(received.region, cluster.node(B).region().to_hex());
    assert!(
        received.their_contact.is_none(),
        "B's contact left before acceptance"
    );

    // A accepts: A's contact goes to B, B's contact comes back to A.
    cluster
        .node(A)
        .service()?
        .answer_interest(
            &id,
            true,
            AnswerInput {
                reason: "Happy to talk".into(),
                contact: contact("Hans Gruber"),
            },
        )
        .await?;
    wait(&cluster, B, "accepted", |s| status_of(s, &id) == "accepted").await?;
    let at_b = cluster.node(B).service()?.interest(&id)?;
    assert_eq!(at_b.their_contact, Some(contact("Hans Gruber")));
    wait(&cluster, A, "B's contact", |s| {
        s.interest(&id)
            .is_ok_and(|v| v.their_contact == Some(contact("Ana Novak")))
    })
    .await?;

    // The outcome is a replicated record: every node, C included, holds it.
    let done = cluster
        .node(A)
        .service()?
        .record_outcome(
            &id,
            OutcomeInput {
                agreement: kim_protocol::types::AgreementType::TechnicalCooperation,
                date: kim_protocol::types::Date::parse("2026-11-20").context("date")?,
                nace: None,
                jobs_created: Some(3),
            },
        )
        .await?;
    assert!(done.outcome.is_some());
    cluster
        .wait_converged(&cluster.all(), Duration::from_secs(30))
        .await?;
    let outcome_at_c = cluster.node(C).service()?.ingest().store().item(
        &a_region,
        kim_protocol::Kind::Outcome,
        &format!("outcome-{}", &id[..16]),
    )?;
    assert!(outcome_at_c.is_some(), "the outcome did not replicate");
    let overview = kim_node::overview::overview(
        cluster.node(C).service()?.ingest(),
        kim_node::ingest::system_now_ms(),
    )?;
    let outcomes = overview
        .outcomes
        .context("the overview counts no outcome")?;
    assert_eq!((outcomes.total, outcomes.jobs_created), (1, 3));
    assert_eq!(outcomes.by_agreement.get("technical_cooperation"), Some(&1));

    // A declined second interest releases nothing.
    let second = cluster
        .node(B)
        .service()?
        .express_interest(
            a_region,
            &offer.key,
            InterestInput {
                message: "A second idea".into(),
                contact: contact("Ana Novak"),
                ..InterestInput::default()
            },
        )
        .await?;
    wait(&cluster, A, "second received", |s| {
        status_of(s, &second.id) == "new"
    })
    .await?;
    cluster
        .node(A)
        .service()?
        .answer_interest(
            &second.id,
            false,
            AnswerInput {
                reason: "Not now".into(),
                contact: contact("Hans Gruber"),
            },
        )
        .await?;
    wait(&cluster, B, "declined", |s| {
        status_of(s, &second.id) == "declined"
    })
    .await?;
    assert!(
        cluster
            .node(B)
            .service()?
            .interest(&second.id)?
            .their_contact
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        cluster
            .node(A)
            .service()?
            .interest(&second.id)?
            .their_contact
            .is_none()
    );

    // A forged answer (C signing for A) is refused by B.
    let forged = Signed::sign(
        Answer {
            federation: cluster.federation(),
            interest: kim_protocol::RecordId::from_hex(&second.id).context("id")?,
            accepted: true,
            reason: "forged".into(),
            contact: Some(contact("Mallory")),
            answered_at_ms: kim_node::ingest::system_now_ms(),
        },
        &cluster.node(C).founder.region_key,
    )?;
    let refused = cluster
        .node(C)
        .running()?
        .net
        .direct(
            cluster.node(B).peer_id,
            DirectMessage::Answer(forged).encode()?,
        )
        .await;
    assert!(
        matches!(&refused, Err(kim_node::net::NetError::Refused(code)) if code == "direct.wrong_signer"),
        "{refused:?}"
    );
    assert_eq!(
        cluster.node(B).service()?.interest(&second.id)?.status,
        "declined"
    );

    // The third node never received any of it: no direct message reached it, it holds no
    // expression of interest, and none is in any sync set.
    let c_stats = cluster.node(C).running()?.net.stats().await?;
    assert_eq!(c_stats.direct_inbound, 0);
    let c_store = cluster.node(C).service()?.ingest().store().clone();
    assert!(c_store.local_scan("interest/")?.is_empty());
    for rid in [&id, &second.id] {
        let rid = kim_protocol::RecordId::from_hex(rid).context("id")?;
        assert!(c_store.direct_record(&rid)?.is_none());
        // Both parties keep it, outside the sync set.
        for i in [A, B] {
            let store = cluster.node(i).service()?.ingest().store().clone();
            assert!(
                store.direct_record(&rid)?.is_some(),
                "node {i} lost the interest"
            );
        }
        for i in [A, B, C] {
            let store = cluster.node(i).service()?.ingest().store().clone();
            assert!(
                !store.holds(&rid, true)?,
                "node {i} has the interest in its sync set"
            );
            let ids: Vec<_> = store.record_ids().collect::<Result<_, _>>()?;
            assert!(!ids.contains(&rid), "node {i} would sync the interest");
        }
    }
    cluster.shutdown().await
}
