//! What the commands do: the certificate commands that need no cluster run here; every
//! other command becomes a request to the cluster, sent through a client connected with the
//! operator's certificate.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context};
use qvdc_cluster::Client;
use qvdc_transport::{
    protocol::{
        ApiRequest, DesiredPower, NetworkSpec, PoolSource, PoolSpec, RevokedCertificate, VmNic,
        VmSpec,
    },
    tls::{self, Identity, Role},
    Endpoint,
};

use crate::cli::{
    CertsCommand, ClusterCommand, Command, Connection, EnterExit, HostCommand, NetworkCommand,
    PoolCommand, PoolKind, VmCommand, VolumeCommand,
};

fn resolve(addrs: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    if addrs.is_empty() {
        bail!("no cluster address: pass --cluster HOST:PORT,... or set QVDC_CLUSTER (qvdc dev writes it to cluster.env)");
    }
    addrs
        .iter()
        .map(|a| {
            a.to_socket_addrs()
                .ok()
                .and_then(|mut r| r.next())
                .with_context(|| format!("cannot resolve {a:?}"))
        })
        .collect()
}

pub(crate) fn client(connection: &Connection) -> anyhow::Result<Client> {
    let nodes = resolve(&connection.cluster)?;
    let missing = |what: &str, var: &str| format!("no {what}: pass --{what} or set {var}");
    let ca = connection
        .ca_cert
        .as_ref()
        .with_context(|| missing("ca-cert", "QVDC_CA_CERT"))?;
    let cert = connection
        .cert
        .as_ref()
        .with_context(|| missing("cert", "QVDC_CERT"))?;
    let key = connection
        .key
        .as_ref()
        .with_context(|| missing("key", "QVDC_KEY"))?;
    let identity = Identity::load(ca, cert, key)?;
    let endpoint = Endpoint::bind("0.0.0.0:0".parse().expect("valid"), &identity, false)?;
    Ok(Client::new(
        endpoint,
        nodes,
        Duration::from_millis(connection.timeout_ms),
    ))
}

/// What `certs revoke` names, read from the certificate file or taken from its flags.
fn revocation(
    certificate: Option<PathBuf>,
    serial: Option<String>,
    role: Option<Role>,
    name: Option<String>,
) -> anyhow::Result<RevokedCertificate> {
    if let Some(path) = certificate {
        let identity = tls::certificate_file(&path)?;
        return Ok(RevokedCertificate {
            serial: identity.serial,
            role: identity.role.to_string(),
            name: identity.name,
        });
    }
    // clap requires all three when there is no file.
    let (Some(serial), Some(role), Some(name)) = (serial, role, name) else {
        anyhow::bail!("give the certificate file, or --serial with --role and --name");
    };
    Ok(RevokedCertificate {
        serial: tls::parse_serial(&serial).map_err(anyhow::Error::msg)?,
        role: role.to_string(),
        name,
    })
}

/// Runs the certificate commands that need no cluster.
pub(crate) fn certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir } => {
            let path = tls::init_ca(&dir)?;
            println!(
                "created CA {}; issue certificates with `qvctl certs issue --dir {}`",
                path.display(),
                dir.display()
            );
        }
        CertsCommand::Issue {
            dir,
            role,
            name,
            days,
            replace,
        } => {
            let options = tls::IssueOptions { days, replace };
            let (cert, key) = tls::issue_with(&dir, role, &name, options)?;
            println!(
                "issued {role} certificate {}, valid for {days} days (key {}, readable by its owner only)",
                cert.display(),
                key.display()
            );
        }
        CertsCommand::Revoke { .. } | CertsCommand::Revoked => {
            unreachable!("sent to the cluster")
        }
    }
    Ok(())
}

pub(crate) fn request_of(command: Command, request_id: String) -> anyhow::Result<ApiRequest> {
    Ok(match command {
        Command::Cluster(ClusterCommand::Status) => ApiRequest::ClusterStatus,
        Command::Cluster(ClusterCommand::AddNode { node_id, addr }) => {
            ApiRequest::ClusterAddNode { node_id, addr }
        }
        Command::Cluster(ClusterCommand::RemoveNode { node_id }) => {
            ApiRequest::ClusterRemoveNode { node_id }
        }
        Command::Cluster(ClusterCommand::ReplaceNode { .. }) => unreachable!("two requests"),
        Command::Cluster(ClusterCommand::AuditRetention { entries }) => {
            ApiRequest::SetAuditRetention {
                request_id,
                entries,
            }
        }
        Command::Events { .. } => unreachable!("handled by `events`"),
        Command::Dashboard { .. } => unreachable!("handled by `dashboard`"),
        Command::Cluster(ClusterCommand::Snapshot(_)) => unreachable!("handled by `backup`"),
        Command::Host(HostCommand::List) => ApiRequest::HostList,
        Command::Host(HostCommand::Show { host }) => ApiRequest::HostShow { host },
        Command::Host(HostCommand::Remove { host }) => ApiRequest::HostRemove { request_id, host },
        Command::Host(HostCommand::Maintenance { host, action, .. }) => {
            ApiRequest::HostMaintenance {
                request_id,
                host,
                on: action == EnterExit::Enter,
            }
        }
        Command::Pool(PoolCommand::Assign { name, hosts, .. }) => ApiRequest::PoolAssign {
            request_id,
            pool: name,
            hosts,
        },
        Command::Pool(PoolCommand::Unassign { name, hosts }) => ApiRequest::PoolUnassign {
            request_id,
            pool: name,
            hosts,
        },
        Command::Pool(PoolCommand::Delete { name, .. }) => ApiRequest::PoolDelete {
            request_id,
            pool: name,
        },
        Command::Pool(PoolCommand::Files { name, host }) => {
            ApiRequest::PoolFiles { pool: name, host }
        }
        Command::Volume(VolumeCommand::Create {
            pool,
            name,
            size,
            format,
            host,
        }) => ApiRequest::VolumeCreate {
            host,
            request_id,
            pool,
            name,
            format: format.into(),
            size_bytes: size,
        },
        Command::Volume(VolumeCommand::Resize { pool, name, size }) => ApiRequest::VolumeResize {
            request_id,
            pool,
            name,
            size_bytes: size,
        },
        Command::Volume(VolumeCommand::Delete { pool, name }) => ApiRequest::VolumeDelete {
            request_id,
            pool,
            name,
        },
        Command::Volume(VolumeCommand::List { pool }) => ApiRequest::VolumeList { pool },
        Command::Network(command) => network_request(command, request_id),
        Command::Pool(PoolCommand::Create {
            name,
            kind,
            path,
            server,
            export,
            options,
            device,
            fs_type,
            hosts,
            scope,
            ..
        }) => {
            // clap requires each type's flags, so the unwraps below cannot fail.
            let source = match kind {
                PoolKind::Dir => PoolSource::Dir {
                    path: path.unwrap_or_default(),
                },
                PoolKind::Nfs => PoolSource::Nfs {
                    server: server.unwrap_or_default(),
                    export: export.unwrap_or_default(),
                    options,
                },
                PoolKind::Block => PoolSource::Block {
                    device: device.unwrap_or_default(),
                    fs_type,
                },
            };
            ApiRequest::PoolCreate {
                request_id,
                spec: PoolSpec {
                    name,
                    source,
                    scope: scope.into(),
                },
                hosts,
            }
        }
        Command::Pool(PoolCommand::Show { name }) => ApiRequest::PoolShow { name },
        Command::Pool(PoolCommand::List) => ApiRequest::PoolList,
        Command::Vm(command) => vm_request(command, request_id)?,
        Command::Certs(CertsCommand::Revoke {
            certificate,
            serial,
            role,
            name,
        }) => ApiRequest::CertRevoke {
            request_id,
            certificate: revocation(certificate, serial, role, name)?,
        },
        Command::Certs(CertsCommand::Revoked) => ApiRequest::CertRevoked,
        Command::Certs(_) | Command::Completions { .. } => unreachable!("handled locally"),
    })
}

fn network_request(command: NetworkCommand, request_id: String) -> ApiRequest {
    match command {
        NetworkCommand::Create {
            name,
            bridge,
            vlan,
            uplink,
            hosts,
        } => ApiRequest::NetworkCreate {
            request_id,
            spec: NetworkSpec {
                name,
                bridge,
                vlan,
                uplink,
            },
            hosts,
        },
        NetworkCommand::Assign { name, hosts } => ApiRequest::NetworkAssign {
            request_id,
            network: name,
            hosts,
        },
        NetworkCommand::Unassign { name, hosts } => ApiRequest::NetworkUnassign {
            request_id,
            network: name,
            hosts,
        },
        NetworkCommand::Delete { name } => ApiRequest::NetworkDelete {
            request_id,
            network: name,
        },
        NetworkCommand::Show { name } => ApiRequest::NetworkShow { network: name },
        NetworkCommand::List => ApiRequest::NetworkList,
    }
}

fn vm_request(command: VmCommand, request_id: String) -> anyhow::Result<ApiRequest> {
    let power = |name, power| ApiRequest::VmSetPower {
        request_id: request_id.clone(),
        name,
        power,
    };
    Ok(match command {
        VmCommand::Create {
            name,
            vcpus,
            memory,
            disks,
            networks,
            host,
            start,
            dry_run,
            ha,
            ..
        } => {
            let spec = VmSpec {
                id: String::new(),
                name,
                vcpus,
                memory_bytes: memory,
                disks,
                nics: networks
                    .into_iter()
                    .map(|network| VmNic { network, mac: None })
                    .collect(),
            };
            match ha.policy() {
                _ if dry_run => ApiRequest::VmPlacement { spec, host },
                Some(ha) if ha.restart => ApiRequest::VmCreateHa {
                    request_id,
                    spec,
                    host,
                    start,
                    ha,
                },
                _ => ApiRequest::VmCreate {
                    spec,
                    host,
                    start,
                    request_id,
                },
            }
        }
        VmCommand::Ha { name, ha } => match (name, ha.policy()) {
            (Some(name), Some(ha)) => ApiRequest::VmSetHa {
                request_id,
                name,
                ha,
            },
            (None, Some(_)) => anyhow::bail!(
                "--ha sets one VM's policy: name the VM, e.g. `qvctl vm ha db --ha restart`"
            ),
            (name, None) => ApiRequest::VmHa { name },
        },
        VmCommand::Start { name, .. } => power(name, DesiredPower::Running),
        VmCommand::Stop { name, .. } => power(name, DesiredPower::Stopped),
        VmCommand::Reboot { name } => ApiRequest::VmReboot { request_id, name },
        VmCommand::ForceOff { name, .. } => ApiRequest::VmForceOff { request_id, name },
        VmCommand::Delete { name, .. } => ApiRequest::VmDelete { request_id, name },
        VmCommand::Adopt {
            domain: (host, domain),
            name,
        } => ApiRequest::VmAdopt {
            request_id,
            host,
            domain,
            name,
        },
        VmCommand::Release { name } => ApiRequest::VmRelease { request_id, name },
        VmCommand::Show { name } => ApiRequest::VmShow { name },
        VmCommand::List => ApiRequest::VmList,
        VmCommand::Migrate { name, to, .. } => ApiRequest::VmMigrate {
            request_id,
            name,
            to,
        },
        VmCommand::Moves => ApiRequest::Moves,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    /// Every write a command makes carries the invocation's request id, so a retry of the
    /// same invocation (or `--request-id`) is applied once.
    #[test]
    fn writes_carry_the_request_id() {
        let request = |args: &[&str]| {
            let cli = Cli::try_parse_from(args.iter().copied()).unwrap();
            request_of(cli.command, "req-9".into()).unwrap()
        };
        match request(&["qvctl", "vm", "reboot", "web"]) {
            ApiRequest::VmReboot { request_id, name } => {
                assert_eq!((request_id.as_str(), name.as_str()), ("req-9", "web"))
            }
            other => panic!("{other:?}"),
        }
        match request(&[
            "qvctl",
            "volume",
            "create",
            "shared",
            "web.qcow2",
            "--size",
            "1G",
        ]) {
            ApiRequest::VolumeCreate {
                request_id,
                size_bytes,
                ..
            } => assert_eq!((request_id.as_str(), size_bytes), ("req-9", 1 << 30)),
            other => panic!("{other:?}"),
        }
    }
}
