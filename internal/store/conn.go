package store

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ConfigurePool sets up every connection cfg will open the way the store's
// statements want it; call it on the pool's config before creating the
// pool. A hook already in cfg.AfterConnect still runs, first.
//
// Each connection plans the store's statements once, generically, and
// reuses that plan (plan_cache_mode = force_generic_plan). Left to itself
// the server re-plans the page query on every execution: for the generic
// plan it must guess LIMIT $2 as a tenth of the table, which makes that
// plan look far dearer than a custom one, although both are the same
// index range scan. Re-planning doubled the database's CPU per page (bench/,
// BENCHMARKS.md). The generic plan is right for every statement here: each
// one is a key lookup, a key range scan in key order or an insert, whatever
// the parameters. The setting exists from PostgreSQL 12 on; where it does
// not, nothing is set.
func ConfigurePool(cfg *pgxpool.Config) {
	prev := cfg.AfterConnect
	cfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		if prev != nil {
			if err := prev(ctx, conn); err != nil {
				return err
			}
		}
		const q = `
SELECT set_config('plan_cache_mode', 'force_generic_plan', false)
FROM pg_settings
WHERE name = 'plan_cache_mode'`
		_, err := conn.Exec(ctx, q)
		return err
	}
}
