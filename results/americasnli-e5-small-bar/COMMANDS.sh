# The AmericasNLI full fine-tuning bar, its lr chosen on held-out shp dev (NOTES.md); repository root
/usr/bin/time -v python results/americasnli-e5-small-bar/bar.py select                    # 37.1 min, 2026-12-06 (select.log)
/usr/bin/time -v python results/americasnli-e5-small-bar/bar.py final --lr 3e-5 --seeds 0 1   # 24.7 min, 2026-12-06 (final.log)
/usr/bin/time -v python results/americasnli-e5-small-bar/bar.py final --lr 3e-5 --seeds 2     # 14.6 min, 2026-12-06 (final-seed-2.log)
