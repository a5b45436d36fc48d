# livemig: the two set-up commands of the README.
#   make demo  — installs what it needs, then runs `livemig demo`
#   make test  — installs what it needs, then runs the whole test suite
# Both create .venv (Python >= 3.11), install livemig editable with its test
# extras, and install Debian packages (graphviz, qemu-system-x86, openssl) with apt-get
# when run as root; otherwise they say what to install.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEBIAN_PACKAGES := graphviz qemu-system-x86 openssl
STAMP  := $(VENV)/.installed

.PHONY: demo test setup system-packages prove prove-mutants clean

demo: setup
	$(BIN)/livemig demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

prove: setup
	$(BIN)/livemig prove --all --traces none --junit prove-junit.xml

# Spec mutants: the catalogue must kill at least 90% (exit 1 otherwise).
prove-mutants: setup
	$(BIN)/livemig prove --all --traces none --mutants --jobs 2

setup: system-packages $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "livemig needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

system-packages:
	@missing=""; \
	command -v dot >/dev/null 2>&1 || missing="$$missing graphviz"; \
	command -v qemu-system-x86_64 >/dev/null 2>&1 || missing="$$missing qemu-system-x86"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "note: missing Debian packages:$$missing — install them with:"; \
	    echo "  sudo apt-get install -y$$missing"; \
	    echo "(tests that need them are skipped with a reason)"; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info out
