# SPDX-License-Identifier: Apache-2.0
# Shared by the bench scripts: stopping the nodes a bench started.

# stop_bench_nodes TENTHS: SIGTERM every pid in the NODE_PID map, give each up to
# TENTHS tenths of a second to flush and exit, then SIGKILL what is left.
stop_bench_nodes() {
  local name
  for name in "${!NODE_PID[@]}"; do kill -TERM "${NODE_PID[$name]}" 2>/dev/null || true; done
  for name in "${!NODE_PID[@]}"; do
    for _ in $(seq "$1"); do kill -0 "${NODE_PID[$name]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${NODE_PID[$name]}" 2>/dev/null || true
    wait "${NODE_PID[$name]}" 2>/dev/null || true
  done
}
