// Package kubernetes holds pgwasm's Kubernetes manifests (a kustomize
// layout) and checks them. kubectl and a cluster cannot run here, so the
// test decodes every manifest strictly (unknown or duplicate fields fail)
// into the Kubernetes API types (k8s.io/api), and checks what the cluster
// relies on: probes on /livez and /readyz, the drain timings, non-root
// and read-only, the session secret from a Secret, port mode off, the VM
// image baked into the container image, selectors that match, and an
// haproxy.cfg that is the template rendered for these names (and that
// HAProxy accepts).
package kubernetes

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/pgwasm/pgwasm/deploy/haproxy"
	"github.com/pgwasm/pgwasm/internal/container"
)

// manifests are the objects of one file, by kind and name.
type manifests struct {
	statefulSets map[string]*appsv1.StatefulSet
	deployments  map[string]*appsv1.Deployment
	services     map[string]*corev1.Service
	pdbs         map[string]*policyv1.PodDisruptionBudget
}

// decodeAll decodes every document of file strictly into its API type,
// chosen by apiVersion and kind; a kind the manifests should not hold
// fails.
func decodeAll(t *testing.T, file string) manifests {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	m := manifests{
		statefulSets: map[string]*appsv1.StatefulSet{},
		deployments:  map[string]*appsv1.Deployment{},
		services:     map[string]*corev1.Service{},
		pdbs:         map[string]*policyv1.PodDisruptionBudget{},
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var name string
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 StatefulSet":
			name, err = decodeInto(doc, m.statefulSets)
		case "apps/v1 Deployment":
			name, err = decodeInto(doc, m.deployments)
		case "v1 Service":
			name, err = decodeInto(doc, m.services)
		case "policy/v1 PodDisruptionBudget":
			name, err = decodeInto(doc, m.pdbs)
		case " ":
			continue // an empty document
		default:
			err = fmt.Errorf("unexpected %s %s", tm.APIVersion, tm.Kind)
		}
		if err != nil {
			t.Fatalf("%s: %s %q: %v", file, tm.Kind, name, err)
		}
	}
	return m
}

// decodeInto decodes doc strictly into a new T and files it under its name.
func decodeInto[T any, PT interface {
	*T
	GetName() string
}](doc []byte, into map[string]PT) (string, error) {
	o := PT(new(T))
	if err := yaml.UnmarshalStrict(doc, o); err != nil {
		return "", err
	}
	into[o.GetName()] = o
	return o.GetName(), nil
}

// kustomization is the part of kustomize's Kustomization the layout uses
// (kustomize's own types are a large dependency for four fields); decoded
// strictly as well.
type kustomization struct {
	APIVersion         string   `json:"apiVersion"`
	Kind               string   `json:"kind"`
	Namespace          string   `json:"namespace"`
	Resources          []string `json:"resources"`
	ConfigMapGenerator []struct {
		Name  string   `json:"name"`
		Files []string `json:"files"`
	} `json:"configMapGenerator"`
}

func env(c corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

// selects reports whether sel, non-empty, selects a pod with these labels.
func selects(sel map[string]string, podLabels map[string]string) bool {
	return len(sel) > 0 && labels.SelectorFromSet(sel).Matches(labels.Set(podLabels))
}

func selectsPod(sel *metav1.LabelSelector, podLabels map[string]string) bool {
	if sel == nil || len(sel.MatchExpressions) > 0 {
		return false
	}
	return selects(sel.MatchLabels, podLabels)
}

func TestKustomization(t *testing.T) {
	b, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatal(err)
	}
	if k.Kind != "Kustomization" || k.Namespace != "pgwasm" {
		t.Errorf("kustomization: kind %q namespace %q", k.Kind, k.Namespace)
	}
	files := append([]string(nil), k.Resources...)
	for _, g := range k.ConfigMapGenerator {
		files = append(files, g.Files...)
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("kustomization names %s: %v", f, err)
		}
	}
}

// TestStrictDecoding: the decoding this package relies on refuses a
// misspelt field and a duplicate one.
func TestStrictDecoding(t *testing.T) {
	for _, doc := range []string{
		"apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: x}\nspec: {maxUnavailabel: 1}\n",
		"apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: x}\nspec: {maxUnavailable: 1, maxUnavailable: 2}\n",
	} {
		if _, err := decodeInto(([]byte)(doc), map[string]*policyv1.PodDisruptionBudget{}); err == nil {
			t.Errorf("decoded without error:\n%s", doc)
		}
	}
}

func TestPgwasmManifest(t *testing.T) {
	objs := decodeAll(t, "pgwasm.yaml")
	ss := objs.statefulSets["pgwasm"]
	if ss == nil {
		t.Fatalf("no apps/v1 StatefulSet pgwasm: %+v", objs)
	}
	if ss.Spec.Replicas == nil || *ss.Spec.Replicas != 3 || ss.Spec.ServiceName != "pgwasm" {
		t.Errorf("StatefulSet: replicas %v, serviceName %q; want 3 behind the headless Service pgwasm (haproxy.cfg names them)", ss.Spec.Replicas, ss.Spec.ServiceName)
	}
	if ss.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("podManagementPolicy %q, want Parallel", ss.Spec.PodManagementPolicy)
	}
	pod := ss.Spec.Template
	if !selectsPod(ss.Spec.Selector, pod.Labels) {
		t.Errorf("StatefulSet selector %v does not match the pod labels %v", ss.Spec.Selector, pod.Labels)
	}
	a := pod.Annotations
	if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != "8080" || a["prometheus.io/path"] != "/metrics" {
		t.Errorf("Prometheus scrape annotations: %v", a)
	}
	// The pod runs as the container image's user.
	imageUID, _ := strconv.ParseInt(strings.Split(container.User, ":")[0], 10, 64)
	psc := pod.Spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 || *psc.RunAsUser != imageUID {
		t.Errorf("pod must run as non-root, as the image's user %d: %+v", imageUID, psc)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("container security context: %+v", sc)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/livez" || p.HTTPGet.Port.String() != "http" {
		t.Errorf("liveness probe: %+v", p)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.String() != "http" {
		t.Errorf("readiness probe: %+v", p)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources: %+v", c.Resources)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["http"] != 8080 || ports["sni"] != 5433 {
		t.Errorf("container ports %v, want http 8080 and sni 5433 (the image's exposed ports)", ports)
	}
	e := env(c)
	want := map[string]string{
		"PGWASM_TUNNEL_PORTS":                     "off",
		"PGWASM_LAZY_SESSIONS":                    "true",
		"PGWASM_LISTEN":                           "0.0.0.0:8080",
		"PGWASM_TUNNEL_SNI_LISTEN":                "0.0.0.0:5433",
		"PGWASM_TUNNEL_MAX_CONNS_PER_SOURCE":      "0",
		"PGWASM_TUNNEL_MAX_HANDSHAKES_PER_SOURCE": "0",
		"PGWASM_TRUST_FORWARDED_FOR":              "true",
		// The VM image is baked into the container image.
		"PGWASM_IMAGE": container.ImageDir,
	}
	for k, v := range want {
		if e[k].Value != v {
			t.Errorf("env %s = %q, want %q", k, e[k].Value, v)
		}
	}
	if s := e["PGWASM_SESSION_SECRET"]; s.Value != "" || s.ValueFrom == nil || s.ValueFrom.SecretKeyRef == nil || s.ValueFrom.SecretKeyRef.Name != "pgwasm-session" {
		t.Errorf("PGWASM_SESSION_SECRET must come from the Secret pgwasm-session: %+v", s)
	}
	drain, err1 := time.ParseDuration(e["PGWASM_DRAIN_DELAY"].Value)
	shutdown, err2 := time.ParseDuration(e["PGWASM_SHUTDOWN_TIMEOUT"].Value)
	grace := pod.Spec.TerminationGracePeriodSeconds
	if err1 != nil || err2 != nil || grace == nil || !(drain > 2*time.Second && drain < shutdown && shutdown < time.Duration(*grace)*time.Second) {
		t.Errorf("drain timings: --drain-delay %v < --shutdown-timeout %v < terminationGracePeriodSeconds %v, and the delay longer than HAProxy's 2 checks of 1 s", drain, shutdown, grace)
	}
	mounted := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounted[m.Name] = true
		if m.MountPath == container.ImageDir || strings.HasPrefix(m.MountPath, container.ImageDir+"/") {
			t.Errorf("volume %s mounted over the baked VM image at %s", m.Name, m.MountPath)
		}
	}
	for _, v := range pod.Spec.Volumes {
		if !mounted[v.Name] {
			t.Errorf("volume %s not mounted", v.Name)
		}
	}

	svc := objs.services["pgwasm"]
	if svc == nil || svc.Spec.ClusterIP != corev1.ClusterIPNone || !svc.Spec.PublishNotReadyAddresses || !selects(svc.Spec.Selector, pod.Labels) {
		t.Errorf("want a headless Service pgwasm selecting the pods, publishing not-ready ones: %+v", svc)
	}
	pdb := objs.pdbs["pgwasm"]
	if pdb == nil || pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || !selectsPod(pdb.Spec.Selector, pod.Labels) {
		t.Errorf("PodDisruptionBudget: %+v", pdb)
	}
}

func TestHAProxyManifest(t *testing.T) {
	objs := decodeAll(t, "haproxy.yaml")
	d := objs.deployments["pgwasm-haproxy"]
	if d == nil || len(d.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("no Deployment pgwasm-haproxy with one container: %+v", objs)
	}
	pod := d.Spec.Template
	if !selectsPod(d.Spec.Selector, pod.Labels) {
		t.Errorf("Deployment selector %v does not match the pod labels %v", d.Spec.Selector, pod.Labels)
	}
	c := pod.Spec.Containers[0]
	cm := ""
	for _, v := range pod.Spec.Volumes {
		if v.ConfigMap != nil {
			cm = v.ConfigMap.Name
		}
	}
	if cm != "pgwasm-haproxy" {
		t.Errorf("HAProxy must mount the ConfigMap pgwasm-haproxy, mounts %q", cm)
	}
	if !strings.Contains(strings.Join(c.Args, " "), "/usr/local/etc/haproxy/haproxy.cfg") {
		t.Errorf("HAProxy args %v", c.Args)
	}
	if sc := pod.Spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("HAProxy must run as non-root")
	}
	svc := objs.services["pgwasm-haproxy"]
	if svc == nil || !selects(svc.Spec.Selector, pod.Labels) || len(svc.Spec.Ports) != 2 {
		t.Errorf("Service pgwasm-haproxy: %+v", svc)
	}
	if objs.pdbs["pgwasm-haproxy"] == nil {
		t.Error("no PodDisruptionBudget for HAProxy")
	}
}

// TestHAProxyConfig: haproxy.cfg is the template rendered for the
// StatefulSet (PGWASM_UPDATE_GOLDEN=1 rewrites it), the Lua file is the
// template's, and HAProxy accepts the configuration.
func TestHAProxyConfig(t *testing.T) {
	p := haproxy.Kubernetes("pgwasm", 3)
	want, err := haproxy.Render(p)
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("PGWASM_UPDATE_GOLDEN") != "" {
		if err := os.WriteFile("haproxy.cfg", want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("haproxy.cfg is not deploy/haproxy's template rendered for Kubernetes; run PGWASM_UPDATE_GOLDEN=1 go test ./deploy/kubernetes/")
	}
	lua, err := os.ReadFile("pg-sslrequest.lua")
	if err != nil || !bytes.Equal(lua, haproxy.Lua) {
		t.Errorf("pg-sslrequest.lua differs from deploy/haproxy's (%v)", err)
	}
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Log("haproxy not installed: configuration not checked by HAProxy")
		return
	}
	dir := t.TempDir()
	p.LuaPath = filepath.Join(dir, "pg-sslrequest.lua")
	os.WriteFile(p.LuaPath, haproxy.Lua, 0o644)
	p.MaxConn = 1000 // this machine's file descriptor limit
	cfg, _ := haproxy.Render(p)
	path := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(path, cfg, 0o644)
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Errorf("haproxy -c: %v\n%s", err, out)
	}
}
