"""Parallel ports: the /dev/lpN (and usblp, ppdev) printer writer, status lines, printer service, consumers.

`status` decodes the status register, `ppdev` wraps /dev/parportN, `printer`
is the open port driven through its fd, `service` the queue and the port's
lifetime, `serve` the consumer side (standalone listener and gateway
channels), `exports` the `[[parallel]]` config tables.
"""
