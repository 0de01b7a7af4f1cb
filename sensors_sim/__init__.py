"""The city simulator behind `citystream sim`: seeded sensor readings, faults and MQTT publishing.

See docs/simulator.md. `generator.Simulation` is the pure message stream, driving every kind
through its `sources.Source`; `transport` is the MQTT side, `runner.run` joins them with pacing;
`make_city` writes the shipped city model.
"""
