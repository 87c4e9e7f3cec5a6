#!/bin/sh
# Writes the password file from the environment (.env), then runs Mosquitto. Device users come
# from MQTT_DEVICE_USERS as "machine:password machine:password ...".
set -eu
mkdir -p /mosquitto/run
: > /mosquitto/run/passwd
mosquitto_passwd -b /mosquitto/run/passwd twin "$TWIN_MQTT_PASSWORD"
mosquitto_passwd -b /mosquitto/run/passwd simulator "$SIMULATOR_MQTT_PASSWORD"
for pair in ${MQTT_DEVICE_USERS:-}; do
  mosquitto_passwd -b /mosquitto/run/passwd "${pair%%:*}" "${pair#*:}"
done
chown -R mosquitto:mosquitto /mosquitto/run /mosquitto/data
chmod 0700 /mosquitto/run
exec mosquitto -c /mosquitto/config/mosquitto.conf
