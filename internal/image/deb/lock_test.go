package deb

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pgwasm/pgwasm/internal/manifest"
)

func sha(c byte) string { return strings.Repeat(string(c), 64) }

// fakeIndex is a Packages index as the archive serves it (and `apt-cache
// show --all-versions` prints it): the archive moved postgresql-17 from
// 17.11 to 17.12 and dropped 17.11.
const fakeIndex = `Package: postgresql-17
Version: 17.12-0+deb13u1
Architecture: i386
Depends: libc6 (>= 2.38)
Size: 17010384
SHA256: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
Description: The World's Most Advanced Open Source Relational Database
 PostgreSQL, also known as Postgres, ...

Package: libc6
Version: 2.41-12
Architecture: i386
Size: 2900000
SHA256: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc

Package: libc6
Version: 2.36-9+deb12u13
Architecture: i386
Size: 2800000
SHA256: dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd
`

func TestLockFormatParse(t *testing.T) {
	l, err := NewLock([]Package{
		{Package: manifest.Package{Name: "postgresql-17", Arch: "i386", Version: "17.11-0+deb13u1", SHA256: sha('a'), Size: 17000000}},
		{Package: manifest.Package{Name: "libc6", Arch: "i386", Version: "2.41-12", SHA256: sha('c'), Size: 2900000}},
		{Package: manifest.Package{Name: "busybox-static", Arch: "i386", Version: "1:1.37.0-6+b3", SHA256: sha('e'), Size: 1000}},
	})
	if err != nil {
		t.Fatal(err)
	}
	text := l.Format()
	if !strings.HasPrefix(string(text), LockHeader) || !strings.Contains(string(text), "\nbusybox-static i386 1:1.37.0-6+b3 "+sha('e')+" 1000\nlibc6 ") {
		t.Fatalf("lock file:\n%s", text)
	}
	back, err := ParseLock(text)
	if err != nil {
		t.Fatal(err)
	}
	if string(back.Format()) != string(text) {
		t.Errorf("round trip changed the lock:\n%s\nwant\n%s", back.Format(), text)
	}
	for _, bad := range []string{
		"", "# only comments\n",
		"libc6 i386 2.41-12 " + sha('c') + "\n",
		"libc6 i386 2.41-12 " + sha('c') + " many\n",
		"libc6 i386 2.41-12 short 10\n",
		"libc6 i386 2.41-12 " + sha('c') + " 10\nlibc6 i386 2.36-9 " + sha('d') + " 10\n",
	} {
		if _, err := ParseLock([]byte(bad)); err == nil {
			t.Errorf("ParseLock(%q) accepted a bad lock file", bad)
		}
	}
}

func TestLockCheck(t *testing.T) {
	l, err := NewLock([]Package{
		{Package: manifest.Package{Name: "postgresql-17", Arch: "i386", Version: "17.11-0+deb13u1", SHA256: sha('a'), Size: 17000000}},
		{Package: manifest.Package{Name: "libc6", Arch: "i386", Version: "2.41-12", SHA256: sha('c'), Size: 2900000}},
	})
	if err != nil {
		t.Fatal(err)
	}
	libc := Package{Package: manifest.Package{Name: "libc6", Arch: "i386", Version: "2.41-12", SHA256: sha('c')}}
	if err := l.check([]Package{libc}, nil, nil); err != nil {
		t.Errorf("the locked version was refused: %v", err)
	}

	// The archive dropped 17.11: apt's pin cannot hold, it resolves 17.12.
	pg := Package{Package: manifest.Package{Name: "postgresql-17", Arch: "i386", Version: "17.12-0+deb13u1", SHA256: sha('b')}}
	err = l.check([]Package{libc, pg}, []byte(fakeIndex), nil)
	if !errors.Is(err, ErrLockMismatch) {
		t.Fatalf("check = %v, want ErrLockMismatch", err)
	}
	for _, want := range []string{"postgresql-17:i386", "locked version 17.11-0+deb13u1 is no longer in the archive", "offers 17.12-0+deb13u1", "make lock"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "libc6") {
		t.Errorf("error names libc6, which matches the lock:\n%v", err)
	}

	// The same version with another checksum, and a package the lock lacks.
	rebuilt := libc
	rebuilt.SHA256 = sha('f')
	extra := Package{Package: manifest.Package{Name: "libfoo1", Arch: "i386", Version: "1.0-1", SHA256: sha('1')}}
	err = l.check([]Package{rebuilt, extra}, []byte(fakeIndex), nil)
	for _, want := range []string{"libc6:i386 2.41-12: the archive's index says sha256 " + sha('f'), "libfoo1:i386 1.0-1 is not in the lock file"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	// Packages an --extra-packages build adds may be unlocked.
	if err := l.check([]Package{libc, extra}, nil, func(p Package) bool { return p.Name == "libfoo1" }); err != nil {
		t.Errorf("an allowed unlocked package was refused: %v", err)
	}
}

// The pins reach apt: against the real archive, a lock naming a version the
// archive does not have fails the resolution with the package, the locked
// version and the offered one, and the current versions resolve.
func TestLockRealArchive(t *testing.T) {
	a, pkgs := resolveRealArchive(t)
	ctx := context.Background()
	good, err := NewLock(pkgs)
	if err != nil {
		t.Fatal(err)
	}
	a.Lock = good
	if _, err := a.Resolve(ctx, []string{"postgresql-client-17"}, true); err != nil {
		t.Fatalf("resolving with the lock just made: %v", err)
	}

	var current string
	for i := range pkgs {
		if pkgs[i].Name == "postgresql-client-17" {
			current = pkgs[i].Version
			pkgs[i].Version = "17.0-0+deb13u0"
		}
	}
	a.Lock, err = NewLock(pkgs)
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Resolve(ctx, []string{"postgresql-client-17"}, true)
	if !errors.Is(err, ErrLockMismatch) {
		t.Fatalf("Resolve with a lock on a version the archive lacks = %v, want ErrLockMismatch", err)
	}
	for _, want := range []string{"postgresql-client-17:i386: locked version 17.0-0+deb13u0 is no longer in the archive", "offers " + current} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
}
