# Two commands: `make serve` (set up, then start the service) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT    ?= 8080
WORKERS ?= 2
DATA_DIR ?= .

.PHONY: serve test test-fast lint setup setup-dev setup-tls browser cameras bench clean

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# uWSGI built from source with OpenSSL, for `serve --tls-cert` (the prebuilt wheel has no TLS);
# needs gcc, the Python headers and libssl-dev
$(VENV)/uwsgi-tls/bin/uwsgi: $(VENV)/.installed
	$(PY) -m pip install --quiet --upgrade --target $(VENV)/uwsgi-tls uwsgi==2.0.30

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev
setup-tls: $(VENV)/uwsgi-tls/bin/uwsgi

serve: setup
	$(PY) run.py serve --port $(PORT) --workers $(WORKERS) --data-dir $(DATA_DIR)

# The console's tests drive a real browser: Debian's chromium (installed here when missing, as root).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } || \
		{ echo "make test needs Debian's chromium: sudo apt-get install chromium"; exit 1; }

# The cameras' tests serve real feeds: GStreamer's RTSP server (in Debian's Python, with python3-gi) and
# Debian's mosquitto as the MQTT broker (installed here when missing, as root).
CAMERA_PACKAGES = mosquitto python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
cameras:
	@{ command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } && /usr/bin/python3 -c "import gi; \
		gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" 2>/dev/null || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends $(CAMERA_PACKAGES); } || \
		{ echo "make test needs Debian's $(CAMERA_PACKAGES): sudo apt-get install them"; exit 1; }

# ruff, mypy, and the import contracts between the packages (import-linter, pyproject.toml)
lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Every test (what .ci/run calls). uWSGI with OpenSSL is built once for the HTTPS test (setup-tls).
# Two pytest processes, each taking whole test files (a file's tests share its stack, in order: test/conftest.py).
test: lint setup-tls browser cameras
	$(PY) -m pytest -n 2 --dist loadfile

# The inner loop: lint and the unit tests (no service, browser or Docker; pytest.ini),
# spread over the cores (at most 4 processes: each loads TensorFlow).
test-fast: lint
	$(PY) -m pytest -m unit -q -n auto --maxprocesses=4

bench: setup-dev
	$(PY) bench/build_lfw.py

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
