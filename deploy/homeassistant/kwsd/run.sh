#!/bin/sh
# The add-on's run script. Everything it does (read /data/options.json, check it, ask the
# Supervisor for the MQTT broker, write kwsd's config, pull the model, announce Wyoming,
# start kwsd) lives in `kwsd container addon`: typed Python with tests, not shell and jq.
# Bad options never crash-loop: kwsd logs why, then uses the last good options or waits.
exec /opt/kwsd/bin/kwsd container addon --data /data
