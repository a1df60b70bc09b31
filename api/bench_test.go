package api_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftchat/weft/account"
	"github.com/weftchat/weft/api"
	"github.com/weftchat/weft/storage/pgtest"
)

// benchRouter is the real router over real storage, with the given bcrypt cost.
func benchRouter(b *testing.B, cost int) (http.Handler, *account.Service) {
	b.Helper()
	db := pgtest.NewDB(b)
	svc := account.New(account.Config{
		ServerName:          "bench.example",
		Password:            account.PasswordPolicy{MinLength: 8, BcryptCost: cost},
		AccessTokenLifetime: time.Hour,
	}, db.Accounts(), nil, nil)
	return api.NewRouter(api.Options{ServerName: "bench.example", MaxBodyBytes: 1 << 20, Accounts: svc, Health: db}), svc
}

// BenchmarkAuthenticatedRequest is the whole middleware chain plus token
// authentication for a warm token: GET /account/whoami through the router.
// Compare with BenchmarkUnauthenticatedRequest for the cost of auth itself.
func BenchmarkAuthenticatedRequest(b *testing.B) {
	h, svc := benchRouter(b, 4)
	ctx := context.Background()
	if _, err := svc.CreateUserByOperator(ctx, "bench", "password1", false); err != nil {
		b.Fatal(err)
	}
	creds, err := svc.LoginPassword(ctx, "bench", "password1", account.DeviceParams{})
	if err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest("GET", "/_matrix/client/v3/account/whoami", nil)
	req.Header.Set("Authorization", "Bearer "+creds.AccessToken)
	h.ServeHTTP(httptest.NewRecorder(), req) // warm the token and last-seen
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	}
}

// BenchmarkUnauthenticatedRequest is the same chain without auth (/versions).
func BenchmarkUnauthenticatedRequest(b *testing.B) {
	h, _ := benchRouter(b, 4)
	req := httptest.NewRequest("GET", "/_matrix/client/versions", nil)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatalf("status %d", rec.Code)
		}
	}
}

// BenchmarkLoginPassword is POST /login at bcrypt cost 10 and at the default 12:
// one KDF verification, a device upsert and a token insert per login.
// Run with -cpu to see how logins scale over cores.
func BenchmarkLoginPassword(b *testing.B) {
	for _, cost := range []int{10, 12} {
		b.Run("bcrypt_cost="+strconv.Itoa(cost), func(b *testing.B) { benchLogin(b, cost) })
	}
}

func benchLogin(b *testing.B, cost int) {
	h, svc := benchRouter(b, cost)
	if _, err := svc.CreateUserByOperator(context.Background(), "bench", "password1", false); err != nil {
		b.Fatal(err)
	}
	body := `{"type":"m.login.password","identifier":{"type":"m.id.user","user":"bench"},"password":"password1"}`
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("POST", "/_matrix/client/v3/login", strings.NewReader(body)))
			if rec.Code != 200 {
				b.Errorf("status %d: %s", rec.Code, rec.Body)
				return
			}
		}
	})
}
