# Postroom: `make run` starts everything; `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run show campaign test lint typecheck layers pytest bench clean compose-tool browser-tool spam-tool \
	sentinel-tool netns-tool postfix-tool prometheus-tool

run: $(STAMP)
	$(BIN)/postroom dev $(DEV_ARGS)

# The running `make run`'s URLs, API token and logins, again.
show: $(STAMP)
	$(BIN)/postroom dev --show $(DEV_ARGS)

# `make campaign ARGS="send list.csv --subject Hi --body-file body.txt"` (or "status ID"),
# with the API token `make run` keeps in var/ unless POSTROOM_TOKEN is set.
campaign: $(STAMP)
	POSTROOM_TOKEN="$${POSTROOM_TOKEN:-$$(cat var/api_token 2>/dev/null)}" \
	  $(BIN)/postroom campaign $(ARGS)

test: $(STAMP) lint typecheck layers pytest

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The import-linter contracts in pyproject.toml: cli/worker -> web -> tasks, the engine
# free of Flask, no feature reaching into another's store.
layers: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP) compose-tool browser-tool spam-tool sentinel-tool netns-tool postfix-tool \
	prometheus-tool
	$(BIN)/pytest $(PYTEST_ARGS)

# tests/cli/e2e/test_compose.py validates docker-compose.yml with Debian's docker-compose.
compose-tool:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing docker-compose (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; \
	  else \
	    echo "docker-compose is missing and cannot be installed here (needs root and apt-get);" \
	      "tests/cli/e2e/test_compose.py will fail until it is installed"; \
	  fi; }

# tests/web/e2e/test_browser.py drives Debian's chromium headless through Playwright.
browser-tool:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$CHROMIUM" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is missing and cannot be installed here (needs root and apt-get);" \
	      "tests/web/e2e/test_browser.py will fail until it is installed (or CHROMIUM names one)"; \
	  fi; }

# tests/delivery/e2e/test_deliverability.py scores each kind of message with Debian's spamassassin.
spam-tool:
	@command -v spamassassin >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing spamassassin (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends spamassassin >/dev/null; \
	  else \
	    echo "spamassassin is missing and cannot be installed here (needs root and apt-get);" \
	      "tests/delivery/e2e/test_deliverability.py will fail until it is installed"; \
	  fi; }

# tests/delivery/e2e/test_sentinel_failover.py runs a primary, a replica and three Sentinels from
# Debian's redis-server and redis-sentinel.
sentinel-tool:
	@{ command -v redis-server && command -v redis-sentinel; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server and redis-sentinel (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends redis-server redis-sentinel >/dev/null; \
	  else \
	    echo "redis-server/redis-sentinel are missing and cannot be installed here (needs root" \
	      "and apt-get); tests/delivery/e2e/test_sentinel_failover.py will skip until they are installed"; \
	  fi; }

# tests/delivery/e2e/multihost/ makes worker hosts as network namespaces (iproute2) and cuts them off
# from Redis with iptables; it runs as root and skips otherwise.
netns-tool:
	@{ command -v ip >/dev/null 2>&1 && command -v iptables >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing iproute2 and iptables (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends iproute2 iptables >/dev/null; \
	  else \
	    echo "ip or iptables is missing and cannot be installed here (needs root and apt-get);" \
	      "tests/delivery/e2e/multihost/ will skip"; \
	  fi; }

# tests/delivery/e2e/postfix/ starts a private Postfix (Cyrus SASL from sasl2-bin); debconf is told
# "No configuration" so the system's own Postfix is left unconfigured and stopped.
postfix-tool:
	@{ command -v postfix && command -v saslpasswd2 && command -v openssl; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing postfix and sasl2-bin (apt-get)"; \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends postfix sasl2-bin openssl \
	      libsasl2-modules >/dev/null; \
	  else \
	    echo "postfix is missing and cannot be installed here (needs root and apt-get);" \
	      "tests/delivery/e2e/postfix/ will be skipped until it is installed"; \
	  fi; }

# Benchmarks (bench/README.md): the whole stack as `make run` starts it, then the delivery
# engine. They need postfix's smtp-sink; if it is missing:
#   DEBIAN_FRONTEND=noninteractive apt-get install -y postfix
bench: $(STAMP)
	$(BIN)/python -m bench stack
	$(BIN)/python -m bench engine
	$(BIN)/python -m bench.profile_batch

$(STAMP): pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet -e "./client[flask]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info

# tests/web/e2e/test_alert_rules.py runs promtool; tests/web/e2e/test_dashboard_queries.py a real Prometheus.
prometheus-tool:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing prometheus (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else \
	    echo "prometheus/promtool is missing and cannot be installed here (needs root and" \
	      "apt-get); tests/web/e2e/test_alert_rules.py and tests/web/e2e/test_dashboard_queries.py skip"; \
	  fi; }
