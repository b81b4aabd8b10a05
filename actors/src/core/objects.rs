//! The three kinds of supervised object as [`Core`]s: a pool (its mounts and its volumes), a
//! VM and a network. Each maps the generic supervisor's inputs onto its own core.

use std::sync::Arc;

use qvdc_raft::{
    model::{NetworkRecord, OrdMap, PoolRecord, VmRecord},
    DesiredState,
};
use qvdc_transport::{
    bugs::{self, Bug},
    protocol::{CommandId, NetworkReport, NetworkView, PoolReport, PoolView, VmReport, VmView},
};
use tokio::time::Instant;

use super::{
    network::{self, NetworkCore},
    pool::{self, PoolCore},
    vm::{self, VmCore},
    volumes::{self, VolumesCore},
    CommandError, CommandIds, Core, HostReports, Order, Timings,
};

/// A pool: its mounts on its hosts, and its volumes' files.
#[derive(Debug)]
pub struct PoolObject {
    pub mounts: PoolCore,
    pub volumes: VolumesCore,
}

/// Where a pool command's answer goes: the mount on one host, or one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolTag {
    Host(String),
    Volume(String),
}

impl Core for PoolObject {
    type Record = Arc<PoolRecord>;
    type Report = PoolReport;
    type View = PoolView;
    type Tag = PoolTag;
    const KIND: &'static str = "pool";

    fn records(desired: &DesiredState) -> &OrdMap<String, Self::Record> {
        &desired.pools
    }

    fn of_host(desired: &DesiredState, host: &str) -> Vec<String> {
        desired
            .pools_of_host(host)
            .map(|p| p.spec.name.clone())
            .collect()
    }

    fn report(reports: &HostReports, name: &str) -> Option<PoolReport> {
        reports.pools.iter().find(|r| r.pool == name).cloned()
    }

    fn new(record: &Self::Record, _: &DesiredState, ids: CommandIds, timings: Timings) -> Self {
        let mounts = PoolCore::new(
            record.spec.clone(),
            record.hosts.clone(),
            ids.clone(),
            timings,
        );
        let mut volumes = VolumesCore::new(record.spec.name.clone(), ids, timings);
        volumes.set_desired(record.volumes.clone());
        Self { mounts, volumes }
    }

    fn name(&self) -> &str {
        &self.mounts.spec().name
    }

    fn hosts(&self) -> Vec<String> {
        self.mounts.hosts().iter().cloned().collect()
    }

    fn set_record(&mut self, record: Self::Record) {
        let record = PoolRecord::clone(&record);
        self.mounts.set_record(record.spec, record.hosts);
        self.volumes.set_desired(record.volumes);
    }

    fn observe(&mut self, host: &str, at: Instant, report: Option<PoolReport>) {
        self.mounts.observe(host, at, report);
    }

    fn command_done(&mut self, tag: PoolTag, id: CommandId, outcome: Result<(), CommandError>) {
        match tag {
            PoolTag::Host(host) => self.mounts.command_done(&host, id, outcome),
            PoolTag::Volume(volume) => self.volumes.command_done(&volume, id, outcome),
        }
    }

    fn tick(&mut self, now: Instant) -> Vec<Order<PoolTag>> {
        let mut orders: Vec<Order<PoolTag>> = self
            .mounts
            .tick(now)
            .into_iter()
            .map(|pool::Effect::Send { host, command }| Order {
                tag: PoolTag::Host(host.clone()),
                host,
                command,
            })
            .collect();
        if !self.volumes.wants_hosts(now) {
            return orders;
        }
        let healthy = self.mounts.healthy_hosts(now);
        orders.extend(self.volumes.tick(now, &healthy).into_iter().map(
            |volumes::Effect::Send {
                 host,
                 volume,
                 command,
             }| Order {
                host,
                command,
                tag: PoolTag::Volume(volume),
            },
        ));
        orders
    }

    fn next_due(&self, now: Instant) -> Option<Instant> {
        [self.mounts.next_due(now), self.volumes.next_due(now)]
            .into_iter()
            .flatten()
            .min()
    }

    fn view(&self, now: Instant) -> PoolView {
        PoolView {
            volumes: self.volumes.views(),
            ..self.mounts.view(now)
        }
    }
}

impl Core for VmCore {
    type Record = VmRecord;
    type Report = VmReport;
    type View = VmView;
    type Tag = ();
    const KIND: &'static str = "VM";

    fn records(desired: &DesiredState) -> &OrdMap<String, VmRecord> {
        &desired.vms
    }

    fn of_host(desired: &DesiredState, host: &str) -> Vec<String> {
        desired
            .vms_of_host(host)
            .map(|vm| vm.spec.name.clone())
            .collect()
    }

    fn report(reports: &HostReports, name: &str) -> Option<VmReport> {
        reports.vms.iter().find(|r| r.name == name).cloned()
    }

    fn reported(reports: &HostReports) -> bool {
        reports.vms_known
    }

    fn new(record: &VmRecord, desired: &DesiredState, ids: CommandIds, timings: Timings) -> Self {
        let core = VmCore::new(record.clone(), ids, timings);
        if !bugs::active(Bug::StartVmOnSecondHost) {
            return core;
        }
        match desired.hosts.keys().find(|h| **h != record.host) {
            Some(spare) => core.with_spare_host(spare.clone()),
            None => core,
        }
    }

    fn name(&self) -> &str {
        &self.record().spec.name
    }

    fn hosts(&self) -> Vec<String> {
        vec![self.record().host.clone()]
    }

    fn set_record(&mut self, record: VmRecord) {
        VmCore::set_record(self, record);
    }

    fn observe(&mut self, host: &str, at: Instant, report: Option<VmReport>) {
        VmCore::observe(self, host, at, report);
    }

    fn command_done(&mut self, _: (), id: CommandId, outcome: Result<(), CommandError>) {
        VmCore::command_done(self, id, outcome);
    }

    fn tick(&mut self, now: Instant) -> Vec<Order<()>> {
        VmCore::tick(self, now)
            .into_iter()
            .map(|vm::Effect::Send { host, command }| Order {
                host,
                command,
                tag: (),
            })
            .collect()
    }

    fn next_due(&self, now: Instant) -> Option<Instant> {
        VmCore::next_due(self, now)
    }

    fn view(&self, now: Instant) -> VmView {
        VmCore::view(self, now)
    }
}

impl Core for NetworkCore {
    type Record = NetworkRecord;
    type Report = NetworkReport;
    type View = NetworkView;
    /// The host the command went to.
    type Tag = String;
    const KIND: &'static str = "network";

    fn records(desired: &DesiredState) -> &OrdMap<String, NetworkRecord> {
        &desired.networks
    }

    fn of_host(desired: &DesiredState, host: &str) -> Vec<String> {
        desired
            .networks_of_host(host)
            .map(|n| n.spec.name.clone())
            .collect()
    }

    fn report(reports: &HostReports, name: &str) -> Option<NetworkReport> {
        reports.networks.iter().find(|r| r.network == name).cloned()
    }

    fn new(record: &NetworkRecord, _: &DesiredState, ids: CommandIds, timings: Timings) -> Self {
        NetworkCore::new(record.clone(), ids, timings)
    }

    fn name(&self) -> &str {
        NetworkCore::name(self)
    }

    fn hosts(&self) -> Vec<String> {
        self.record().hosts.iter().cloned().collect()
    }

    fn set_record(&mut self, record: NetworkRecord) {
        NetworkCore::set_record(self, record);
    }

    fn observe(&mut self, host: &str, at: Instant, report: Option<NetworkReport>) {
        NetworkCore::observe(self, host, at, report);
    }

    fn command_done(&mut self, host: String, id: CommandId, outcome: Result<(), CommandError>) {
        NetworkCore::command_done(self, &host, id, outcome);
    }

    fn tick(&mut self, now: Instant) -> Vec<Order<String>> {
        NetworkCore::tick(self, now)
            .into_iter()
            .map(|network::Effect::Send { host, command }| Order {
                tag: host.clone(),
                host,
                command,
            })
            .collect()
    }

    fn next_due(&self, now: Instant) -> Option<Instant> {
        NetworkCore::next_due(self, now)
    }

    fn view(&self, now: Instant) -> NetworkView {
        NetworkCore::view(self, now)
    }
}
