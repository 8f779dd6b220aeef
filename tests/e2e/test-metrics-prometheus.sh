#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Metrics, lag alert and logs, end to end: two nodes mirror a volume; site-a serves
# /metrics; a real Prometheus scrapes it and its HTTP API must return the applied cycle
# that `status --json` shows. `promtool check metrics` must find nothing wrong with
# the exposition, and `promtool check rules` accepts the shipped alert rules (which
# Prometheus loads too). lag_alert flags the mirror in status and in metrics once its
# replica is older than that. Every log line has the documented shape. Bad operations
# keys are refused naming the key.
source "$(dirname "$0")/mirror-lib.sh"
command -v prometheus >/dev/null 2>&1 || skip "prometheus is not installed (Debian package prometheus)"
command -v promtool >/dev/null 2>&1 || skip "promtool is not installed (Debian package prometheus)"
require_cmd curl
RULES=$(cd "$(dirname "$0")/../../docs/prometheus" && pwd)/amirror-alerts.yml

log "bad operations keys are refused, naming the key"
setup_nodes site-a site-b
bad_config() { # KEY_LINES -> exit status and stderr of `amirror node` on a config with them
  sed "s|^listen = |$1\nlisten = |" "$WORK/site-a.toml" >"$WORK/bad.toml"
  local rc=0
  "$AMIRROR" node --config "$WORK/bad.toml" >"$WORK/bad.out" 2>"$WORK/bad.err" || rc=$?
  echo $rc
}
rc=$(bad_config 'log_level = "loud"')
((rc == 2)) || fail "log_level = \"loud\": exit $rc, not 2: $(cat "$WORK/bad.err")"
grep -q "'log_level'.*'loud'" "$WORK/bad.err" || fail "log_level = \"loud\": unclear error: $(cat "$WORK/bad.err")"
rc=$(bad_config 'metrics_listen = "0.0.0.0:9464"')
((rc == 2)) || fail "metrics_listen on 0.0.0.0 without opt-in: exit $rc, not 2: $(cat "$WORK/bad.err")"
grep -q "'metrics_listen' 0.0.0.0:9464 is not a loopback address.*metrics_allow_remote = true" "$WORK/bad.err" ||
  fail "metrics_listen on 0.0.0.0: unclear error: $(cat "$WORK/bad.err")"
[[ ! -e $WORK/site-a.d ]] || fail "a refused config created the data directory"
rc=0
"$AMIRROR" node --config "$WORK/site-a.toml" --log-level loud >/dev/null 2>"$WORK/bad.err" || rc=$?
((rc == 2)) && grep -q -- "--log-level" "$WORK/bad.err" || fail "--log-level loud: exit $rc: $(cat "$WORK/bad.err")"

read -r METRICS_PORT PROM_PORT <<<"$(free_ports 2)"
# lag_alert 1s with an interval of an hour: after a sync the replica ages past it.
sed -i "s|^listen = |metrics_listen = \"127.0.0.1:$METRICS_PORT\"\nlag_alert = \"1s\"\nlog_level = \"debug\"\nlisten = |" \
  "$WORK/site-a.toml"
start_node site-a
start_node site-b
am site-a volume create db --size 16M >/dev/null
am site-a mirror start db --to site-b --interval 1h >/dev/null
write_pattern site-a db 0 1M 0x5a
mirror_sync site-a db
write_pattern site-a db 4M 64k 0x17
mirror_sync site-a db
APPLIED=$(mirror_field site-a db site-b applied_cycle)
[[ -n $APPLIED ]] && ((APPLIED >= 2)) || fail "applied_cycle after two syncs is '$APPLIED'"
log "status --json says applied_cycle $APPLIED"

curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics.txt" || fail "GET /metrics on site-a failed"
promtool check metrics <"$WORK/metrics.txt" >"$WORK/promtool.out" 2>&1 ||
  fail "promtool check metrics failed: $(head -20 "$WORK/promtool.out")"
[[ ! -s $WORK/promtool.out ]] || fail "promtool check metrics complained: $(head -20 "$WORK/promtool.out")"
grep -q "^amirror_mirror_applied_cycle{volume=\"db\",target=\"site-b\"} $APPLIED\$" "$WORK/metrics.txt" ||
  fail "/metrics lacks applied cycle $APPLIED: $(grep applied_cycle "$WORK/metrics.txt")"
for series in amirror_volume_write_bytes_total amirror_nbd_request_duration_seconds_bucket \
  amirror_volume_freeze_stall_seconds_bucket amirror_mirror_cycle_duration_seconds_bucket \
  amirror_volume_layers amirror_mirror_sent_bytes_total process_resident_memory_bytes process_cpu_seconds_total; do
  grep -q "^$series" "$WORK/metrics.txt" || fail "/metrics has no $series"
done
promtool check rules "$RULES" >"$WORK/rules.out" 2>&1 || fail "promtool check rules $RULES: $(cat "$WORK/rules.out")"

log "a real Prometheus scrapes site-a"
cat >"$WORK/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $RULES
scrape_configs:
  - job_name: amirror
    static_configs:
      - targets: ["127.0.0.1:$METRICS_PORT"]
YAML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus-data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
SERVE_PID[prometheus]=$!
query() { # PROMQL -> the first result's value, or nothing
  curl -fsS -G "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$1" 2>/dev/null |
    jq -r '.data.result[0].value[1] // empty' 2>/dev/null
}
prometheus_has() { [[ $(query "$1") == "$2" ]]; }
wait_until 60 "Prometheus to report amirror_mirror_applied_cycle = $APPLIED" \
  prometheus_has 'amirror_mirror_applied_cycle{volume="db",target="site-b"}' "$APPLIED"
wait_until 60 "Prometheus to see site-a up" prometheus_has 'up{job="amirror"}' 1
rules=$(curl -fsS "http://127.0.0.1:$PROM_PORT/api/v1/rules" | jq -r '[.data.groups[].rules[].name] | join(",")')
[[ $rules == *AmirrorMirrorLagging* ]] || fail "Prometheus did not load the shipped rules: '$rules'"

log "lag_alert flags the mirror once its replica is older than 1s"
lag_alerted() { [[ $(mirror_field site-a db site-b lag_alert) == true ]]; }
wait_until 60 "status --json to flag the mirror's lag" lag_alerted
am site-a status | grep -q "LAG ALERT" || fail "status (text) does not show the lag alert: $(cat "$WORK/last.out")"
wait_until 60 "Prometheus to see amirror_mirror_lag_alert = 1" \
  prometheus_has 'amirror_mirror_lag_alert{volume="db",target="site-b"}' 1
prometheus_has 'amirror_node_lag_alert_seconds' 1 || fail "amirror_node_lag_alert_seconds is not 1"

log "every log line is: time level component key=value... msg=\"...\""
stop_node site-a
stop_node site-b
for name in site-a site-b; do
  bad=$(grep -v '^=== ' "$WORK/$name.log" |
    grep -Ev '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z (TRACE|DEBUG|INFO|WARN|ERROR) [a-z]+( [a-z_]+=[^ ]*)*.* msg="[^"]*"$' || true)
  [[ -z $bad ]] || fail "$name logged lines not in the documented format: $(head -3 <<<"$bad")"
done
grep -q ' DEBUG mirror volume=db target=site-b cycle=[0-9]* .*msg="cycle applied"$' "$WORK/site-a.log" ||
  fail "log_level = \"debug\" did not log the applied cycles"
! grep -q ' DEBUG ' "$WORK/site-b.log" || fail "site-b (log_level info by default) logged DEBUG lines"
grep -q ' INFO node .*metrics=127.0.0.1:'"$METRICS_PORT"' .*msg="running"$' "$WORK/site-a.log" ||
  fail "site-a's start line does not name its metrics address"
log "ok"
