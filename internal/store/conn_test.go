package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// pagePlans lists pages of ten rows on a one-connection pool and returns
// how often that connection planned the page query generically and how
// often it planned it for the values at hand (pg_prepared_statements is
// per connection, hence the single one).
func pagePlans(t *testing.T, configure bool) (generic, custom int64) {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(dbtest.NewSchema(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	if configure {
		store.ConfigurePool(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	st := store.New(pool)
	if _, _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	// Enough rows that the generic plan's guess (a tenth of a third of the
	// table) is far above a page, as it is in production.
	const fill = `
INSERT INTO test (name)
SELECT 'row' || g
FROM generate_series(1, 20000) AS g`
	if _, err := pool.Exec(ctx, fill); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "ANALYZE test"); err != nil {
		t.Fatal(err)
	}
	var after int64
	for range 12 {
		page, err := st.List(ctx, after, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 0 {
			after = int64(page[len(page)-1].ID)
		} else {
			after = 0
		}
	}
	const q = `
SELECT generic_plans,
       custom_plans
FROM pg_prepared_statements
WHERE statement LIKE '%FROM test%WHERE id > $1%'
  AND statement NOT LIKE '%pg_prepared_statements%'`
	if err := pool.QueryRow(ctx, q).Scan(&generic, &custom); err != nil {
		t.Fatalf("read the page statement's plan counts: %v", err)
	}
	return generic, custom
}

func TestConfigurePool(t *testing.T) {
	t.Parallel()

	t.Run("PlansPagesOnce", func(t *testing.T) {
		t.Parallel()
		generic, custom := pagePlans(t, true)
		if custom != 0 || generic != 12 {
			t.Errorf("page query planned %d times generically and %d times for its values, want 12 and 0", generic, custom)
		}
	})

	t.Run("WithoutItReplans", func(t *testing.T) {
		// Why ConfigurePool exists: the server's default keeps re-planning.
		t.Parallel()
		if _, custom := pagePlans(t, false); custom < 10 {
			t.Errorf("without ConfigurePool the page query was planned for its values only %d times of 12; "+
				"if the server now picks the generic plan by itself, ConfigurePool may no longer be needed", custom)
		}
	})

	t.Run("KeepsEarlierHook", func(t *testing.T) {
		t.Parallel()
		cfg, err := pgxpool.ParseConfig(dbtest.NewSchema(t))
		if err != nil {
			t.Fatal(err)
		}
		hookErr := errors.New("earlier hook")
		cfg.AfterConnect = func(context.Context, *pgx.Conn) error { return hookErr }
		store.ConfigurePool(cfg)
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		if err := pool.Ping(context.Background()); !errors.Is(err, hookErr) {
			t.Errorf("Ping = %v, want the earlier AfterConnect hook's error", err)
		}
	})
}
