//! vSwitches on a host: a Linux bridge per network, optionally with a VLAN sub-interface of an
//! uplink as a port. The `Networker` trait has a real implementation on iproute2 (`ip`, run
//! as a child process so nothing blocks the runtime) and a simulated one.

use std::{collections::BTreeMap, future::Future, sync::Mutex, time::Duration};

use qvdc_transport::{
    limits::{self, IFNAME_BYTES_MAX},
    protocol::{CommandOutput, HostError, HostErrorKind, NetworkReport, NetworkSpec},
};

/// How long one `ip` command may take.
pub const IP_COMMAND_TIMEOUT_MS: u64 = 5_000;

/// Creates, removes and inspects bridges. `ensure` and `remove` are idempotent.
pub trait Networker: Send + Sync + 'static {
    fn ensure(&self, spec: NetworkSpec) -> impl Future<Output = Result<(), HostError>> + Send;
    fn remove(&self, spec: NetworkSpec) -> impl Future<Output = Result<(), HostError>> + Send;
    /// The network's state now; a missing bridge is down with the reason.
    fn report(&self, spec: NetworkSpec) -> impl Future<Output = NetworkReport> + Send;
}

fn invalid(message: String) -> HostError {
    HostError::new(HostErrorKind::Invalid, message)
}

fn validate_ifname(what: &str, name: &str) -> Result<(), HostError> {
    if limits::is_interface_name(name) {
        return Ok(());
    }
    Err(invalid(format!(
        "{what} {name:?} must be 1 to {IFNAME_BYTES_MAX} letters, digits, '-', '_' or '.' (a Linux interface name)"
    )))
}

/// The VLAN port's interface name, if the spec has one. Checks the whole spec.
pub fn vlan_port(spec: &NetworkSpec) -> Result<Option<String>, HostError> {
    validate_ifname("bridge name", &spec.bridge)?;
    match (&spec.uplink, spec.vlan) {
        (None, None) => Ok(None),
        (Some(uplink), Some(vlan)) => {
            validate_ifname("uplink", uplink)?;
            if !(1..=4094).contains(&vlan) {
                return Err(invalid(format!(
                    "VLAN id {vlan} must be between 1 and 4094"
                )));
            }
            let port = format!("{uplink}.{vlan}");
            validate_ifname("VLAN interface", &port)?;
            Ok(Some(port))
        }
        _ => Err(invalid(
            "a VLAN needs both an uplink and a VLAN id (or neither, for a bridge of its own)"
                .into(),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Real bridges

/// Bridges through iproute2, in the host's network namespace or in a named one.
#[derive(Debug, Clone, Default)]
pub struct IpNetworker {
    netns: Option<String>,
}

/// What `ip -d -j link show` says about one interface.
#[derive(Debug)]
struct Link {
    kind: Option<String>,
    admin_up: bool,
    master: Option<String>,
    /// The interface's alias, where qvdc marks what it created (see [`owner_mark`]).
    alias: Option<String>,
}

/// The alias qvdc gives an interface it creates for `network`: the bridge and its VLAN port.
/// An interface without it was there before and belongs to someone else: qvdc neither
/// adopts it nor ever deletes it.
fn owner_mark(network: &str) -> String {
    format!("qvdc network {network}")
}

fn not_ours(interface: &str, what: &str) -> HostError {
    HostError::new(
        HostErrorKind::Conflict,
        format!(
            "{what} {interface} already exists on this host and was not created by qvdc for this network; pick another name (qvdc never takes over or deletes interfaces it did not create)"
        ),
    )
}

impl IpNetworker {
    pub fn host() -> Self {
        Self { netns: None }
    }

    /// Works inside network namespace `name` (which must exist).
    pub fn in_namespace(name: impl Into<String>) -> Self {
        Self {
            netns: Some(name.into()),
        }
    }

    async fn ip(&self, args: &[&str]) -> Result<String, HostError> {
        let mut command = tokio::process::Command::new("ip");
        if let Some(netns) = &self.netns {
            command.args(["-n", netns]);
        }
        command.args(args).kill_on_drop(true);
        let shown = args.join(" ");
        let run = tokio::time::timeout(
            Duration::from_millis(IP_COMMAND_TIMEOUT_MS),
            command.output(),
        );
        let output = match run.await {
            Err(_) => {
                return Err(HostError::new(
                    HostErrorKind::Timeout,
                    format!("`ip {shown}` did not finish within {IP_COMMAND_TIMEOUT_MS} ms"),
                ))
            }
            Ok(Err(e)) => {
                return Err(HostError::new(
                    HostErrorKind::Failed,
                    format!("cannot run ip ({e}); install iproute2 on this host"),
                ))
            }
            Ok(Ok(output)) => output,
        };
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        Err(HostError::new(
            HostErrorKind::Failed,
            format!(
                "`ip {shown}` failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ))
    }

    async fn link(&self, name: &str) -> Result<Option<Link>, HostError> {
        match self.ip(&["-d", "-j", "link", "show", "dev", name]).await {
            Ok(json) => Ok(Some(parse_link(&json)?)),
            Err(e) if e.message.contains("does not exist") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn parse_link(json: &str) -> Result<Link, HostError> {
    let unreadable = |e: String| {
        HostError::new(
            HostErrorKind::Failed,
            format!("cannot read ip's JSON output: {e}"),
        )
    };
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| unreadable(e.to_string()))?;
    let link = value
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| unreadable("no interface in it".into()))?;
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    Ok(Link {
        kind: text(&link["linkinfo"]["info_kind"]),
        admin_up: link["flags"]
            .as_array()
            .is_some_and(|flags| flags.iter().any(|f| f == "UP")),
        master: text(&link["master"]),
        alias: text(&link["ifalias"]),
    })
}

impl Networker for IpNetworker {
    async fn ensure(&self, spec: NetworkSpec) -> Result<(), HostError> {
        let port = vlan_port(&spec)?;
        let bridge = spec.bridge.as_str();
        let mark = owner_mark(&spec.name);
        match self.link(bridge).await? {
            None => {
                self.ip(&["link", "add", "name", bridge, "type", "bridge"])
                    .await?;
                self.ip(&["link", "set", "dev", bridge, "alias", &mark])
                    .await?;
            }
            Some(link)
                if link.kind.as_deref() == Some("bridge")
                    && link.alias.as_deref() != Some(mark.as_str()) =>
            {
                return Err(not_ours(bridge, "bridge"));
            }
            Some(link) if link.kind.as_deref() != Some("bridge") => {
                return Err(HostError::new(
                    HostErrorKind::Conflict,
                    format!(
                        "interface {bridge} exists and is not a bridge ({}); pick another bridge name",
                        link.kind.as_deref().unwrap_or("a physical device")
                    ),
                ));
            }
            Some(_) => {}
        }
        self.ip(&["link", "set", bridge, "up"]).await?;
        let (Some(port), Some(uplink), Some(vlan)) = (port, &spec.uplink, spec.vlan) else {
            return Ok(());
        };
        if self.link(uplink).await?.is_none() {
            return Err(HostError::new(
                HostErrorKind::NotFound,
                format!("uplink {uplink} does not exist on this host; check the host's interfaces (ip link)"),
            ));
        }
        match self.link(&port).await? {
            None => {
                let id = vlan.to_string();
                self.ip(&[
                    "link", "add", "link", uplink, "name", &port, "type", "vlan", "id", &id,
                ])
                .await?;
                self.ip(&["link", "set", "dev", &port, "alias", &mark])
                    .await?;
            }
            Some(link) if link.alias.as_deref() != Some(mark.as_str()) => {
                return Err(not_ours(&port, "VLAN interface"));
            }
            Some(_) => {}
        }
        self.ip(&["link", "set", &port, "master", bridge, "up"])
            .await?;
        Ok(())
    }

    async fn remove(&self, spec: NetworkSpec) -> Result<(), HostError> {
        let port = vlan_port(&spec)?;
        let mark = owner_mark(&spec.name);
        let ours = |link: &Option<Link>| {
            link.as_ref()
                .is_some_and(|l| l.alias.as_deref() == Some(mark.as_str()))
        };
        if let Some(port) = port {
            if ours(&self.link(&port).await?) {
                self.ip(&["link", "del", &port]).await?;
            }
        }
        // Only what qvdc created for this network: `ensure` refused anything else.
        if ours(&self.link(&spec.bridge).await?) {
            self.ip(&["link", "del", &spec.bridge]).await?;
        }
        Ok(())
    }

    async fn report(&self, spec: NetworkSpec) -> NetworkReport {
        let mut report = NetworkReport {
            network: spec.name.clone(),
            bridge: spec.bridge.clone(),
            up: false,
            error: None,
        };
        let down = |mut report: NetworkReport, why: String| {
            report.error = Some(why);
            report
        };
        let bridge = match self.link(&spec.bridge).await {
            Ok(Some(link)) => link,
            Ok(None) => return down(report, format!("bridge {} does not exist", spec.bridge)),
            Err(e) => return down(report, e.message),
        };
        if !bridge.admin_up {
            return down(
                report,
                format!("bridge {} is administratively down", spec.bridge),
            );
        }
        if let Ok(Some(port)) = vlan_port(&spec) {
            match self.link(&port).await {
                Ok(Some(link)) if link.master.as_deref() != Some(spec.bridge.as_str()) => {
                    return down(
                        report,
                        format!("VLAN port {port} is not attached to {}", spec.bridge),
                    )
                }
                Ok(Some(link)) if !link.admin_up => {
                    return down(report, format!("VLAN port {port} is down"))
                }
                Ok(Some(_)) => {}
                Ok(None) => return down(report, format!("VLAN port {port} does not exist")),
                Err(e) => return down(report, e.message),
            }
        }
        report.up = true;
        report
    }
}

// ---------------------------------------------------------------------------------------
// Simulated bridges

#[derive(Debug, Default)]
struct SimNet {
    uplinks: Vec<String>,
    bridges: BTreeMap<String, NetworkSpec>,
    /// Bridges that were on the host before qvdc: never adopted, never deleted.
    foreign: Vec<String>,
    failure: Option<String>,
}

/// Bridges in memory, for the simulation. Uplinks are given; a failure can be switched on.
#[derive(Debug, Default)]
pub struct SimNetworker {
    state: Mutex<SimNet>,
}

impl SimNetworker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The host's physical interfaces a VLAN may use.
    pub fn with_uplinks<const N: usize>(self, uplinks: [&str; N]) -> Self {
        self.net().uplinks = uplinks.iter().map(|u| u.to_string()).collect();
        self
    }

    /// A bridge someone else created on this host.
    pub fn with_foreign_bridge(self, bridge: &str) -> Self {
        self.net().foreign.push(bridge.to_owned());
        self
    }

    /// Makes every `ensure` fail with `reason` (`None` heals it).
    pub fn set_failure(&self, reason: Option<String>) {
        self.net().failure = reason;
    }

    fn net(&self) -> std::sync::MutexGuard<'_, SimNet> {
        self.state.lock().expect("sim network poisoned")
    }
}

impl Networker for SimNetworker {
    async fn ensure(&self, spec: NetworkSpec) -> Result<(), HostError> {
        vlan_port(&spec)?;
        let mut net = self.net();
        if let Some(reason) = &net.failure {
            return Err(HostError::new(HostErrorKind::Failed, reason.clone()));
        }
        if net.foreign.contains(&spec.bridge) {
            return Err(not_ours(&spec.bridge, "bridge"));
        }
        if let Some(uplink) = &spec.uplink {
            if !net.uplinks.contains(uplink) {
                return Err(HostError::new(
                    HostErrorKind::NotFound,
                    format!("uplink {uplink} does not exist on this host; check the host's interfaces (ip link)"),
                ));
            }
        }
        net.bridges.insert(spec.bridge.clone(), spec);
        Ok(())
    }

    async fn remove(&self, spec: NetworkSpec) -> Result<(), HostError> {
        vlan_port(&spec)?;
        self.net().bridges.remove(&spec.bridge);
        Ok(())
    }

    async fn report(&self, spec: NetworkSpec) -> NetworkReport {
        let present = self.net().bridges.get(&spec.bridge) == Some(&spec);
        NetworkReport {
            network: spec.name.clone(),
            bridge: spec.bridge.clone(),
            up: present,
            error: (!present).then(|| format!("bridge {} does not exist", spec.bridge)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The host's networks

/// The networks configured on this host, by name.
pub struct Networks<N> {
    networker: N,
    specs: Mutex<BTreeMap<String, NetworkSpec>>,
}

impl<N: Networker> Networks<N> {
    pub fn new(networker: N) -> Self {
        Self {
            networker,
            specs: Mutex::new(BTreeMap::new()),
        }
    }

    fn specs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NetworkSpec>> {
        self.specs.lock().expect("network table poisoned")
    }

    /// The bridge VMs on `network` attach to, if the network is configured here.
    pub fn bridge_of(&self, network: &str) -> Option<String> {
        self.specs().get(network).map(|s| s.bridge.clone())
    }

    pub async fn ensure(&self, spec: NetworkSpec) -> Result<CommandOutput, HostError> {
        let previous = self.specs().get(&spec.name).cloned();
        if let Some(previous) = previous.filter(|p| *p != spec) {
            // Reconfigured: take the old bridge and port down first.
            self.networker.remove(previous).await?;
        }
        self.specs().insert(spec.name.clone(), spec.clone());
        self.networker
            .ensure(spec)
            .await
            .map(|()| CommandOutput::Done)
    }

    pub async fn remove(&self, name: &str) -> Result<CommandOutput, HostError> {
        let Some(spec) = self.specs().get(name).cloned() else {
            return Ok(CommandOutput::Done);
        };
        self.networker.remove(spec).await?;
        self.specs().remove(name);
        Ok(CommandOutput::Done)
    }

    pub async fn reports(&self) -> Vec<NetworkReport> {
        let specs: Vec<NetworkSpec> = self.specs().values().cloned().collect();
        let mut reports = Vec::with_capacity(specs.len());
        for spec in specs {
            reports.push(self.networker.report(spec).await);
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn spec(name: &str, bridge: &str, vlan: Option<(&str, u16)>) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            bridge: bridge.into(),
            vlan: vlan.map(|(_, id)| id),
            uplink: vlan.map(|(uplink, _)| uplink.to_owned()),
        }
    }

    /// The behaviour every `Networker` must show. The host has an uplink `eth0`; `vlans` says
    /// whether its kernel can make VLAN interfaces (8021q).
    /// `foreign` is a bridge that existed on the host before qvdc.
    async fn conformance(n: &impl Networker, vlans: bool, foreign: &str) {
        let theirs = spec("theirs", foreign, None);
        let err = n.ensure(theirs.clone()).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
        assert!(err.message.contains("was not created by qvdc"), "{err}");
        n.remove(theirs.clone()).await.unwrap();
        // Still there, and still not taken over (a deleted one would now be created).
        let again = n.ensure(theirs).await.unwrap_err();
        assert_eq!(again.kind, HostErrorKind::Conflict, "{again}");

        let plain = spec("prod", "qvbr-prod", None);
        for _ in 0..2 {
            n.ensure(plain.clone()).await.expect("ensure is idempotent");
        }
        let up = n.report(plain.clone()).await;
        assert!(up.up && up.error.is_none(), "{up:?}");

        let tagged = spec("dmz", "qvbr-dmz", Some(("eth0", 42)));
        if vlans {
            for _ in 0..2 {
                n.ensure(tagged.clone()).await.unwrap();
            }
            assert!(n.report(tagged.clone()).await.up);
        } else {
            // The kernel's own words reach the operator.
            let err = n.ensure(tagged.clone()).await.unwrap_err();
            assert_eq!(err.kind, HostErrorKind::Failed, "{err}");
            assert!(err.message.contains("type vlan"), "{err}");
            let report = n.report(tagged.clone()).await;
            assert!(!report.up && report.error.unwrap().contains("eth0.42"));
        }

        let missing = spec("x", "qvbr-x", Some(("eth9", 7)));
        let err = n.ensure(missing).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::NotFound, "{err}");
        assert!(err.message.contains("eth9"), "{err}");

        for bad in [
            spec("b", "a-bridge-name-too-long", None),
            spec("b", "br0", Some(("eth0", 0))),
            NetworkSpec {
                vlan: Some(5),
                ..spec("b", "br0", None)
            },
        ] {
            let err = n.ensure(bad.clone()).await.unwrap_err();
            assert_eq!(err.kind, HostErrorKind::Invalid, "{bad:?}: {err}");
        }

        for network in [plain, tagged] {
            for _ in 0..2 {
                n.remove(network.clone())
                    .await
                    .expect("remove is idempotent");
            }
            let down = n.report(network).await;
            assert!(!down.up, "{down:?}");
            assert!(down.error.unwrap().contains("does not exist"));
        }
    }

    #[tokio::test]
    async fn sim_networker_conforms() {
        let networker = SimNetworker::new()
            .with_uplinks(["eth0"])
            .with_foreign_bridge("br-them");
        conformance(&networker, true, "br-them").await;
    }

    #[tokio::test]
    async fn networks_map_names_to_bridges_and_report_each() {
        let networks = Networks::new(SimNetworker::new().with_uplinks(["eth0"]));
        networks
            .ensure(spec("prod", "br-prod", None))
            .await
            .unwrap();
        assert_eq!(networks.bridge_of("prod").as_deref(), Some("br-prod"));
        assert_eq!(networks.bridge_of("dev"), None);
        // Moving the network to another bridge removes the old one.
        networks
            .ensure(spec("prod", "br-prod2", None))
            .await
            .unwrap();
        let reports = networks.reports().await;
        assert_eq!(reports.len(), 1);
        assert!(reports[0].up && reports[0].bridge == "br-prod2");
        networks.remove("prod").await.unwrap();
        networks.remove("prod").await.unwrap();
        assert!(networks.reports().await.is_empty());
    }

    /// A network namespace of the test's own, deleted when dropped, with an uplink `eth0`
    /// (one end of a veth pair: this kernel has no dummy interfaces).
    struct Namespace(String);

    impl Namespace {
        fn create() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "qvdc-t-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let ip = |args: &[&str]| {
                let status = std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .unwrap();
                assert!(status.success(), "ip {args:?}");
            };
            ip(&["netns", "add", &name]);
            let namespace = Self(name);
            ip(&[
                "-n",
                &namespace.0,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0p",
            ]);
            ip(&["-n", &namespace.0, "link", "set", "eth0", "up"]);
            namespace
        }

        /// Whether the kernel makes VLAN interfaces (it needs the 8021q module).
        fn vlans(&self) -> bool {
            let probe = [
                "-n", &self.0, "link", "add", "link", "eth0", "name", "probe.9",
            ];
            let made = std::process::Command::new("ip")
                .args(probe)
                .args(["type", "vlan", "id", "9"])
                .output()
                .is_ok_and(|o| o.status.success());
            if made {
                let _ = std::process::Command::new("ip")
                    .args(["-n", &self.0, "link", "del", "probe.9"])
                    .status();
            }
            made
        }
    }

    impl Drop for Namespace {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    /// Whether this process may create network namespaces; under QVDC_REQUIRE_REAL=1 it must.
    fn may_create_namespaces() -> bool {
        let root = nix::unistd::geteuid().is_root();
        let ip = std::process::Command::new("ip").arg("-V").output().is_ok();
        let required = std::env::var("QVDC_REQUIRE_REAL").is_ok_and(|v| v == "1");
        assert!(
            (root && ip) || !required,
            "QVDC_REQUIRE_REAL=1 but this test needs root and iproute2 (root: {root}, ip: {ip})"
        );
        root && ip
    }

    #[tokio::test]
    async fn real_bridges_in_a_namespace_conform_needs_root() {
        if !may_create_namespaces() {
            return;
        }
        let namespace = Namespace::create();
        let networker = IpNetworker::in_namespace(&namespace.0);
        let vlans = namespace.vlans();
        eprintln!("this kernel makes VLAN interfaces: {vlans}");
        let status = std::process::Command::new("ip")
            .args([
                "-n",
                &namespace.0,
                "link",
                "add",
                "name",
                "br-them",
                "type",
                "bridge",
            ])
            .status()
            .unwrap();
        assert!(status.success());
        std::process::Command::new("ip")
            .args(["-n", &namespace.0, "link", "set", "br-them", "up"])
            .status()
            .unwrap();
        conformance(&networker, vlans, "br-them").await;
        assert!(
            networker.link("br-them").await.unwrap().is_some(),
            "left alone"
        );

        // A bridge name taken by another kind of interface is a conflict, and is left alone.
        let taken = spec("t", "eth0", None);
        let err = networker.ensure(taken.clone()).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
        networker.remove(taken).await.unwrap();
        assert!(networker.link("eth0").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_vlan_port_taken_off_its_bridge_is_reported_down_needs_root() {
        if !may_create_namespaces() {
            return;
        }
        let namespace = Namespace::create();
        if !namespace.vlans() {
            eprintln!("skipped: this kernel has no VLAN interfaces (8021q)");
            return;
        }
        let networker = IpNetworker::in_namespace(&namespace.0);
        let tagged = spec("dmz", "qvbr-dmz", Some(("eth0", 42)));
        networker.ensure(tagged.clone()).await.unwrap();
        networker
            .ip(&["link", "set", "eth0.42", "nomaster"])
            .await
            .unwrap();
        let report = networker.report(tagged.clone()).await;
        assert!(!report.up);
        assert!(
            report.error.unwrap().contains("not attached"),
            "behind our back"
        );
        networker.ensure(tagged.clone()).await.unwrap();
        assert!(networker.report(tagged).await.up, "ensure repairs it");
    }
}
