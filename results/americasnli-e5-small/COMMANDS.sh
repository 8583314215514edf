# AmericasNLI, leave-languages-out, the NusaX final recipe (NOTES.md); from the repository root
/usr/bin/time -v deftx pipeline configs/americasnli-e5-small.yaml            # seed 0, 96.2 min, 2026-12-05
/usr/bin/time -v deftx pipeline configs/americasnli-e5-small.yaml --seeds 1  # seed 1, 95.5 min, 2026-12-06 (run-seed-1.log)
/usr/bin/time -v deftx pipeline configs/americasnli-e5-small.yaml --seeds 2  # seed 2, 76.5 min, 2026-12-06 (run-seed-2.log)
deftx losses results/americasnli-e5-small/logs/seed-{0,1,2} > results/americasnli-e5-small/losses.md   # loss trend of every phase, 2026-12-06
