#!/bin/bash
set -x
cd "$(dirname "$0")/../.."   # the repository root
/usr/bin/time -v deftx pipeline configs/nusax-e5-small-final.yaml
