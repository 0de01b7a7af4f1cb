"""InfluxDB 2.x: everything citystream says to it and how its answers are read.

`lineproto` (the one line-protocol encoder), `flux` (Flux string literals and filters),
`write` (the HTTP write client and its fake), `query` (the query client), `admin` (the
management API client) and `errors` (InfluxDB's errors as operator sentences).
"""
