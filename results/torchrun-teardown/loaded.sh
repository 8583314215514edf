#!/usr/bin/env bash
# the interleaved hunt with one busy process holding a core (a loaded CI machine)
python3 -c "while True: pass" &
burner=$!
./hunt.sh ${1:-80}
kill $burner
