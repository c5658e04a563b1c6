"""The hypervisor side: PCI/USB passthrough, SR-IOV and live attach (`redirgate host ...`).

Redirection (the rest of redirgate) moves a thin client's device to a VM over
the network; this package is the other half an admin needs on the
hypervisor itself: give a PCI device, a USB controller or a USB peripheral
to a VM with vfio-pci, make SR-IOV virtual functions, print the libvirt
`<hostdev>` / QEMU `-device` for them, and hot plug a redirgate route (or a
host device) into a running VM over QMP or libvirt.

It is careful first: every change is a plan of sysfs writes that can be
printed before it runs (`--dry-run`), binds only through `driver_override`
(never `new_id`, which grabs every device with the same ID), takes an IOMMU
group whole, and refuses a group that holds something the host depends on
(the root filesystem's disk, the default route's NIC, the console keyboard's
controller) or something in use.  Everything is read from sysfs and /proc
under roots a test can move (:class:`~redirgate.host.paths.HostPaths`);
nothing is written outside sysfs, the files `--persist` names, and the state
folder under /run/redirgate that remembers what `vfio unbind` must restore.

Imports only the standard library and trio (for QMP); never the client or
the gateway.
"""
