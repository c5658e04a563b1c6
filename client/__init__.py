"""redirgate.client: the thin-client side.

Device access (pyusb, pyserial, parallel ports), the usbredir host engine,
export policy, standalone listeners and the tunnel service.  Imports
`redirgate.proto`; never imports `redirgate.gateway` except its transport
package.
"""
