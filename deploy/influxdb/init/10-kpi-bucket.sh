#!/bin/sh
# Runs once at first start of the influxdb image (after setup): the second bucket of the contract.
set -e
influx bucket create --name kpi --org "$DOCKER_INFLUXDB_INIT_ORG" --token "$DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"
