"""The tooling that starts relaynet on one machine: ``relaynet demo``, ``relaynet simulate``,
the benchmarks and the tests all use it.

- ``toolkit``: processes (a nats-server, a relay, stopping, ``/proc`` figures, CPU
  meter), region configs (written only with ``relay.config.writer``), free ports and
  waits.
- ``network``: several regions (NATS, relays, link proxies, clients with a location).
- ``linkproxy``: the delay/cut proxy on each inter-region link.

Nothing here imports Docker or testcontainers: ``relay.simulate`` adds containers.
"""
