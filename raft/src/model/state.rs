//! The desired state: every object's record in persistent maps, the per-host index kept in
//! step with them (and the lookups by host it serves), and a decoding of the maps that grows
//! them as entries arrive. Persisted in snapshots: field order is the encoding.

use std::sync::Arc;

use qvdc_transport::protocol::RevokedCertificate;
use serde::{Deserialize, Serialize};

use super::{HostRecord, NetworkRecord, OrdMap, OrdSet, PoolRecord, RequestLog, VmRecord};

/// Everything the control plane has decided. Maps are ordered so that every iteration over
/// them is the same on every node and in every simulation run.
///
/// The maps are persistent (structurally shared) B-trees: cloning the whole state is O(1)
/// and a change copies only the path to what changed. The state machine publishes a clone
/// after every applied batch and the leader's supervisors diff consecutive versions, so a
/// write costs in proportion to what it changed, not to how much exists (ADR 10).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    #[serde(deserialize_with = "grown::ord_map")]
    pub hosts: OrdMap<String, HostRecord>,
    #[serde(deserialize_with = "grown::ord_map")]
    pub pools: OrdMap<String, Arc<PoolRecord>>,
    /// VMs by name.
    #[serde(deserialize_with = "grown::ord_map")]
    pub vms: OrdMap<String, VmRecord>,
    #[serde(deserialize_with = "grown::ord_map")]
    pub networks: OrdMap<String, NetworkRecord>,
    /// The deny list: certificates no node accepts, by serial.
    #[serde(deserialize_with = "grown::ord_map")]
    pub revoked: OrdMap<String, RevokedCertificate>,
    pub requests: RequestLog,
    /// What is assigned to each host, so per-host lookups (every heartbeat) do not scan every
    /// object. Kept in step by `apply`; see `index_matches_a_scan` in the tests.
    #[serde(deserialize_with = "grown::ord_map")]
    by_host: OrdMap<String, HostIndex>,
    /// The audit trail and the cluster's release level (from storage format 3).
    pub audit: super::Audit,
}

/// The names of what is assigned to one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct HostIndex {
    #[serde(deserialize_with = "grown::ord_set")]
    pools: OrdSet<String>,
    #[serde(deserialize_with = "grown::ord_set")]
    vms: OrdSet<String>,
    #[serde(deserialize_with = "grown::ord_set")]
    networks: OrdSet<String>,
}

/// Decoding of the persistent maps that grows them as entries arrive. imbl's own
/// `Deserialize` reserves room for as many entries as the input claims before reading any:
/// nine bytes of a snapshot claiming 2^32 hosts asked for an 858 GB allocation (found by
/// the `snapshot` fuzz target). Same encoding, so nothing stored changes.
mod grown {
    use std::marker::PhantomData;

    use imbl::{OrdMap, OrdSet};
    use serde::{
        de::{MapAccess, SeqAccess, Visitor},
        Deserialize, Deserializer,
    };

    struct MapVisitor<K, V>(PhantomData<(K, V)>);

    impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        type Value = OrdMap<K, V>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = OrdMap::new();
            while let Some((key, value)) = access.next_entry()? {
                map.insert(key, value);
            }
            Ok(map)
        }
    }

    pub(super) fn ord_map<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        deserializer.deserialize_map(MapVisitor(PhantomData))
    }

    struct SetVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de> + Ord + Clone> Visitor<'de> for SetVisitor<T> {
        type Value = OrdSet<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a set")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut set = OrdSet::new();
            while let Some(item) = access.next_element()? {
                set.insert(item);
            }
            Ok(set)
        }
    }

    pub(super) fn ord_set<'de, D, T>(deserializer: D) -> Result<OrdSet<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Ord + Clone,
    {
        deserializer.deserialize_seq(SetVisitor(PhantomData))
    }
}

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Pool,
    Vm,
    Network,
}

impl DesiredState {
    pub(super) fn indexed(&mut self, kind: Kind, host: &str, name: &str, present: bool) {
        let index = self.by_host.entry(host.to_owned()).or_default();
        let set = match kind {
            Kind::Pool => &mut index.pools,
            Kind::Vm => &mut index.vms,
            Kind::Network => &mut index.networks,
        };
        if present {
            set.insert(name.to_owned());
        } else {
            set.remove(name);
        }
    }

    /// Drops `host`'s index entry and returns the pools and networks it listed.
    pub(super) fn take_index(&mut self, host: &str) -> (Vec<String>, Vec<String>) {
        let index = self.by_host.remove(host).unwrap_or_default();
        (
            index.pools.into_iter().collect(),
            index.networks.into_iter().collect(),
        )
    }

    /// The names of the VMs placed on `host_id`, in name order.
    pub fn vms_on<'a>(&'a self, host_id: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.index_of(host_id).into_iter().flat_map(|i| &i.vms)
    }

    fn index_of(&self, host: &str) -> Option<&HostIndex> {
        self.by_host.get(host)
    }

    /// The VMs placed on `host_id`, in name order.
    pub fn vms_of_host<'a>(&'a self, host_id: &'a str) -> impl Iterator<Item = &'a VmRecord> + 'a {
        self.index_of(host_id)
            .into_iter()
            .flat_map(|i| &i.vms)
            .filter_map(|name| self.vms.get(name))
    }

    /// The networks assigned to `host_id`, in name order.
    pub fn networks_of_host<'a>(
        &'a self,
        host_id: &'a str,
    ) -> impl Iterator<Item = &'a NetworkRecord> + 'a {
        self.index_of(host_id)
            .into_iter()
            .flat_map(|i| &i.networks)
            .filter_map(|name| self.networks.get(name))
    }

    /// The pools assigned to `host_id`, in name order.
    pub fn pools_of_host<'a>(
        &'a self,
        host_id: &'a str,
    ) -> impl Iterator<Item = &'a PoolRecord> + 'a {
        self.index_of(host_id)
            .into_iter()
            .flat_map(|i| &i.pools)
            .filter_map(|name| self.pools.get(name).map(|record| &**record))
    }
}

/// The desired state as storage formats 1 and 2 encode it (a VM without an HA policy): how
/// snapshots written before format 3 are read, and how the digest a release of those formats
/// reported over a state is computed again.
pub mod format_2 {
    use qvdc_transport::protocol::{DesiredPower, RevokedCertificate, VmSpec};
    use serde::{Deserialize, Serialize};

    use super::{grown, HostIndex};
    use crate::model::{HostRecord, NetworkRecord, OrdMap, PoolRecord, RequestLog, VmRecord};
    use std::sync::Arc;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct VmRecord2 {
        spec: VmSpec,
        host: String,
        power: DesiredPower,
        adopted: Option<String>,
        releasing: bool,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct DesiredState2 {
        #[serde(deserialize_with = "grown::ord_map")]
        hosts: OrdMap<String, HostRecord>,
        #[serde(deserialize_with = "grown::ord_map")]
        pools: OrdMap<String, Arc<PoolRecord>>,
        #[serde(deserialize_with = "grown::ord_map")]
        vms: OrdMap<String, VmRecord2>,
        #[serde(deserialize_with = "grown::ord_map")]
        networks: OrdMap<String, NetworkRecord>,
        #[serde(deserialize_with = "grown::ord_map")]
        revoked: OrdMap<String, RevokedCertificate>,
        requests: RequestLog,
        #[serde(deserialize_with = "grown::ord_map")]
        by_host: OrdMap<String, HostIndex>,
    }

    impl From<DesiredState2> for super::DesiredState {
        fn from(old: DesiredState2) -> Self {
            let vms = old
                .vms
                .into_iter()
                .map(|(name, vm)| {
                    let record = VmRecord {
                        spec: vm.spec,
                        host: vm.host,
                        power: vm.power,
                        adopted: vm.adopted,
                        releasing: vm.releasing,
                        ha: Default::default(),
                        moving: None,
                        move_failed: None,
                    };
                    (name, record)
                })
                .collect();
            Self {
                hosts: old.hosts,
                pools: old.pools,
                vms,
                networks: old.networks,
                revoked: old.revoked,
                requests: old.requests,
                by_host: old.by_host,
                audit: Default::default(),
            }
        }
    }

    impl super::DesiredState {
        /// This state as format 2 encodes it; `None` if a VM has an HA policy or a move, or
        /// the cluster keeps an audit trail, which format 2 cannot hold.
        pub fn to_format_2(&self) -> Option<DesiredState2> {
            if self.audit != Default::default() {
                return None;
            }
            let vms = self
                .vms
                .iter()
                .map(|(name, vm)| {
                    let new_fields = vm.ha != Default::default()
                        || vm.moving.is_some()
                        || vm.move_failed.is_some();
                    (!new_fields).then(|| {
                        let record = VmRecord2 {
                            spec: vm.spec.clone(),
                            host: vm.host.clone(),
                            power: vm.power,
                            adopted: vm.adopted.clone(),
                            releasing: vm.releasing,
                        };
                        (name.clone(), record)
                    })
                })
                .collect::<Option<OrdMap<_, _>>>()?;
            Some(DesiredState2 {
                hosts: self.hosts.clone(),
                pools: self.pools.clone(),
                vms,
                networks: self.networks.clone(),
                revoked: self.revoked.clone(),
                requests: self.requests.clone(),
                by_host: self.by_host.clone(),
            })
        }

        /// The digest a format-2 release computes over this state ([`Self::digest`] over
        /// its format-2 encoding); `None` if a VM has an HA policy.
        pub fn digest_in_format_2(&self) -> Option<u64> {
            Some(crate::model::fnv_digest(&self.to_format_2()?))
        }
    }
}
