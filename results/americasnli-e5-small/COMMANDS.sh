# AmericasNLI, leave-languages-out, the NusaX final recipe (NOTES.md); from the repository root
/usr/bin/time -v deftx pipeline configs/americasnli-e5-small.yaml            # seed 0, 96.2 min, 2026-12-05
/usr/bin/time -v deftx pipeline configs/americasnli-e5-small.yaml --seeds 1  # seed 1, 95.5 min, 2026-12-06 (run-seed-1.log)
