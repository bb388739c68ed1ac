package cli

import (
	"strings"
	"testing"

	"github.com/pgwasm/pgwasm/internal/vm"
)

func str(s string) *string { return &s }

func TestPrintResult(t *testing.T) {
	tests := []struct {
		name string
		res  vm.Result
		want string
	}{
		{
			name: "command tag",
			res:  vm.Result{Command: "INSERT 0 2", RowsAffected: 2},
			want: "INSERT 0 2\n",
		},
		{
			name: "table",
			res: vm.Result{
				Columns: []vm.Column{{Name: "id", Type: "int4"}, {Name: "name", Type: "text"}},
				Rows:    [][]*string{{str("1"), str("alice")}, {str("20"), nil}},
				Command: "SELECT 2",
			},
			want: " id | name\n----+-------\n  1 | alice\n 20 |\n(2 rows)\n\n",
		},
		{
			name: "multi-line value",
			res: vm.Result{
				Columns: []vm.Column{{Name: "t", Type: "text"}},
				Rows:    [][]*string{{str("a\nbc")}},
			},
			want: " t\n----\n a +\n bc\n(1 row)\n\n",
		},
	}
	for _, tt := range tests {
		var b strings.Builder
		printResult(&b, &tt.res)
		if b.String() != tt.want {
			t.Errorf("%s: printResult =\n%q\nwant\n%q", tt.name, b.String(), tt.want)
		}
	}
}
