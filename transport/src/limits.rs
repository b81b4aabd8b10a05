//! The limits on what qvdc's objects may be, each defined once, beside the schema they bound
//! (`protocol`): the control plane validates the desired state against them and hosts check
//! what they are asked to do against the same numbers, so the two can never disagree about
//! what is valid.

/// An object's name (a host, pool, volume, VM or network), in bytes. Names become file names,
/// libvirt domain names and command-line arguments on hosts.
pub const NAME_BYTES_MAX: usize = 64;
/// A Linux network interface's name (a bridge, a VLAN port), in bytes.
pub const IFNAME_BYTES_MAX: usize = 15;
/// A path on a host (a pool's directory, a device), in bytes.
pub const PATH_BYTES_MAX: usize = 4096;
/// A VM's vCPUs.
pub const VM_VCPUS_MAX: u32 = 512;
/// A VM's memory, at least.
pub const VM_MEMORY_BYTES_MIN: u64 = 16 << 20;
/// A VM's disks (virtio names vda..vdz).
pub const VM_DISKS_MAX: usize = 26;
/// A VM's NICs.
pub const VM_NICS_MAX: usize = 32;
/// A volume's size (16 TiB).
pub const VOLUME_BYTES_MAX: u64 = 16 << 40;

/// Whether `name` is a plain object name: 1 to [`NAME_BYTES_MAX`] bytes of letters, digits,
/// '.', '_' or '-', not starting with '.' or '-' (never a path, an option or a hidden file).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Whether `name` can name a Linux network interface: 1 to [`IFNAME_BYTES_MAX`] bytes of
/// letters, digits, '-', '_' or '.'.
pub fn is_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_BYTES_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_bounded_and_never_paths_or_options() {
        assert!(is_plain_name("web-01.qcow2"));
        assert!(is_plain_name(&"a".repeat(NAME_BYTES_MAX)));
        assert!(!is_plain_name(&"a".repeat(NAME_BYTES_MAX + 1)));
        for bad in ["", ".hidden", "-rf", "a/b", "..", "a b", "é"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
        assert!(is_interface_name("br-prod.100"));
        assert!(!is_interface_name("a-very-long-bridge"));
    }
}
