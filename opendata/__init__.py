"""`citystream opendata`: the city's KPIs as open data under the Open Government Licence v3.0
(CONTRACT section 6; docs/opendata.md)."""
