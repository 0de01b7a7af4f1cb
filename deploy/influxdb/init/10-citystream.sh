#!/bin/sh
# Runs once, at the first start of the influxdb image (after its setup made the org and the
# telemetry bucket): the rest of what deploy/influxdb/provision.py does for `citystream up`.
#   kpi (retention KPI_RETENTION, default 400d), kpi_1h (KPI_1H_RETENTION, default 0 = forever),
#   InfluxQL mappings db=<bucket> rp=autogen for all three, the hourly roll-up task.
set -e
org="$DOCKER_INFLUXDB_INIT_ORG"
token="$DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"
kpi_id=$(influx bucket create --name kpi --retention "${KPI_RETENTION:-400d}" \
  --org "$org" --token "$token" --hide-headers | cut -f1)
kpi_1h_id=$(influx bucket create --name kpi_1h --retention "${KPI_1H_RETENTION:-0}" \
  --org "$org" --token "$token" --hide-headers | cut -f1)
for mapping in "telemetry $DOCKER_INFLUXDB_INIT_BUCKET_ID" "kpi $kpi_id" "kpi_1h $kpi_1h_id"; do
  set -- $mapping
  influx v1 dbrp create --db "$1" --rp autogen --bucket-id "$2" --default \
    --org "$org" --token "$token"
done
influx task create --org "$org" --token "$token" --file /etc/citystream/tasks/kpi_1h.flux
