"""redirgate.gateway: the DMZ side.

Tunnel listener, client registry, routes, hypervisor listeners, the relay,
the admin API and the PKI commands.  Imports `redirgate.proto`; never imports
`redirgate.client`.
"""
