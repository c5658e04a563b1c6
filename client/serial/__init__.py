"""Serial ports: selection, line settings, fd-driven port, port service, consumers."""
