//! A reboot runs once per operator request: the leader that retries a reboot after a
//! leader change sends the same request id, and the host answers from memory instead of
//! rebooting the guest again.

use std::{cell::RefCell, rc::Rc, time::Duration};

use qvdc_transport::{
    facts::{self, Fact},
    protocol::{HostCommandKind, Leadership, VmSpec},
    Endpoint,
};

mod support;

use support::{accept_host, certificates, identity, start_sim_agent};

#[tokio::test]
async fn a_retried_reboot_does_not_reboot_the_guest_again() {
    let reboots = Rc::new(RefCell::new(0));
    let _watching = {
        let reboots = reboots.clone();
        facts::watch(move |fact| {
            if matches!(fact, Fact::VmOperation { op: "reboot", .. }) {
                *reboots.borrow_mut() += 1;
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let leader = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity(dir.path(), "node-1"),
        true,
    )
    .unwrap();
    let _agent = start_sim_agent(dir.path(), leader.local_addr().unwrap(), None);
    let registered = Leadership { term: 2, node: 1 };
    let mut session =
        tokio::time::timeout(Duration::from_secs(10), accept_host(&leader, registered))
            .await
            .unwrap();
    let spec = VmSpec {
        id: "vm-1".into(),
        name: "web".into(),
        vcpus: 1,
        memory_bytes: 64 << 20,
        disks: Vec::new(),
        nics: Vec::new(),
    };
    session
        .command(HostCommandKind::DefineVm(spec))
        .await
        .unwrap();
    let start = HostCommandKind::StartVm { name: "web".into() };
    session.command(start).await.unwrap();
    let reboot = |request: &str| HostCommandKind::RebootVm {
        name: "web".into(),
        request: request.into(),
    };
    // The retry may arrive while the first reboot still runs.
    let (first, retry) = tokio::join!(
        session.command_as(registered, 100, reboot("req-1")),
        session.command_as(registered, 101, reboot("req-1")),
    );
    first.unwrap();
    retry.unwrap();
    session.command(reboot("req-1")).await.unwrap();
    assert_eq!(
        *reboots.borrow(),
        1,
        "the same request rebooted the guest twice"
    );
    session.command(reboot("req-2")).await.unwrap();
    assert_eq!(*reboots.borrow(), 2, "a new request reboots it again");
}
