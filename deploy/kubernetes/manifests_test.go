// Package kubernetes holds pgwasm's Kubernetes manifests (a kustomize
// layout) and checks them. kubectl and a cluster cannot run here, so the
// test decodes every manifest strictly (unknown fields fail) into the
// subset of the Kubernetes API types the manifests use, and checks what the
// cluster relies on: probes on /livez and /readyz, the drain timings,
// non-root and read-only, the session secret from a Secret, port mode off,
// selectors that match, and an haproxy.cfg that is the template rendered
// for these names (and that HAProxy accepts).
package kubernetes

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pgwasm/pgwasm/deploy/haproxy"
)

// The subset of the Kubernetes API the manifests use, with the API's
// field names: a misspelt or misplaced field fails to decode.
type (
	objectMeta struct {
		Name        string            `yaml:"name"`
		Labels      map[string]string `yaml:"labels"`
		Annotations map[string]string `yaml:"annotations"`
	}
	labelSelector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	}
	envVar struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	}
	probe struct {
		HTTPGet *struct {
			Path string `yaml:"path"`
			Port string `yaml:"port"`
		} `yaml:"httpGet"`
		TCPSocket *struct {
			Port string `yaml:"port"`
		} `yaml:"tcpSocket"`
		PeriodSeconds    int `yaml:"periodSeconds"`
		FailureThreshold int `yaml:"failureThreshold"`
	}
	securityContext struct {
		RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
		RunAsUser                *int64 `yaml:"runAsUser"`
		RunAsGroup               *int64 `yaml:"runAsGroup"`
		FSGroup                  *int64 `yaml:"fsGroup"`
		AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
		Capabilities             *struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
		SeccompProfile *struct {
			Type string `yaml:"type"`
		} `yaml:"seccompProfile"`
	}
	container struct {
		Name  string   `yaml:"name"`
		Image string   `yaml:"image"`
		Args  []string `yaml:"args"`
		Env   []envVar `yaml:"env"`
		Ports []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
		} `yaml:"ports"`
		LivenessProbe  *probe `yaml:"livenessProbe"`
		ReadinessProbe *probe `yaml:"readinessProbe"`
		Resources      struct {
			Requests map[string]string `yaml:"requests"`
			Limits   map[string]string `yaml:"limits"`
		} `yaml:"resources"`
		SecurityContext *securityContext `yaml:"securityContext"`
		VolumeMounts    []struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
			ReadOnly  bool   `yaml:"readOnly"`
		} `yaml:"volumeMounts"`
	}
	volume struct {
		Name                  string `yaml:"name"`
		PersistentVolumeClaim *struct {
			ClaimName string `yaml:"claimName"`
			ReadOnly  bool   `yaml:"readOnly"`
		} `yaml:"persistentVolumeClaim"`
		EmptyDir *struct {
			SizeLimit string `yaml:"sizeLimit"`
		} `yaml:"emptyDir"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	}
	podTemplate struct {
		Metadata objectMeta `yaml:"metadata"`
		Spec     struct {
			TerminationGracePeriodSeconds *int64           `yaml:"terminationGracePeriodSeconds"`
			AutomountServiceAccountToken  *bool            `yaml:"automountServiceAccountToken"`
			SecurityContext               *securityContext `yaml:"securityContext"`
			Containers                    []container      `yaml:"containers"`
			Volumes                       []volume         `yaml:"volumes"`
		} `yaml:"spec"`
	}
	servicePort struct {
		Name       string `yaml:"name"`
		Port       int    `yaml:"port"`
		TargetPort string `yaml:"targetPort"`
	}
	object struct {
		APIVersion string     `yaml:"apiVersion"`
		Kind       string     `yaml:"kind"`
		Metadata   objectMeta `yaml:"metadata"`
		Spec       struct {
			// StatefulSet, Deployment
			ServiceName         string        `yaml:"serviceName"`
			Replicas            *int          `yaml:"replicas"`
			PodManagementPolicy string        `yaml:"podManagementPolicy"`
			Selector            labelSelector `yaml:"selector"`
			Template            *podTemplate  `yaml:"template"`
			// Service (its selector is a plain map: see serviceSelector)
			Type                     string        `yaml:"type"`
			ClusterIP                string        `yaml:"clusterIP"`
			PublishNotReadyAddresses bool          `yaml:"publishNotReadyAddresses"`
			Ports                    []servicePort `yaml:"ports"`
			// PodDisruptionBudget
			MaxUnavailable *int `yaml:"maxUnavailable"`
		} `yaml:"spec"`
	}
	kustomization struct {
		APIVersion         string   `yaml:"apiVersion"`
		Kind               string   `yaml:"kind"`
		Namespace          string   `yaml:"namespace"`
		Resources          []string `yaml:"resources"`
		ConfigMapGenerator []struct {
			Name  string   `yaml:"name"`
			Files []string `yaml:"files"`
		} `yaml:"configMapGenerator"`
	}
)

// decodeAll decodes every document of file strictly. A Service's selector
// is a map, a workload's a LabelSelector: Services are decoded with it
// moved aside.
func decodeAll(t *testing.T, file string) []object {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []object
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var node yaml.Node
		if err := dec.Decode(&node); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var kind struct {
			Kind string `yaml:"kind"`
		}
		node.Decode(&kind)
		if kind.Kind == "Service" {
			moveServiceSelector(&node)
		}
		var o object
		var buf bytes.Buffer
		if err := yaml.NewEncoder(&buf).Encode(&node); err != nil {
			t.Fatal(err)
		}
		d := yaml.NewDecoder(&buf)
		d.KnownFields(true)
		if err := d.Decode(&o); err != nil {
			t.Fatalf("%s: %s %q: %v", file, kind.Kind, o.Metadata.Name, err)
		}
		out = append(out, o)
	}
	return out
}

// moveServiceSelector rewrites a Service's spec.selector {k: v} as
// {matchLabels: {k: v}}, so it decodes into the one object type.
func moveServiceSelector(doc *yaml.Node) {
	root := doc.Content[0]
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value != "spec" {
			continue
		}
		spec := root.Content[i+1]
		for j := 0; j+1 < len(spec.Content); j += 2 {
			if spec.Content[j].Value == "selector" {
				sel := spec.Content[j+1]
				spec.Content[j+1] = &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
					{Kind: yaml.ScalarNode, Value: "matchLabels"}, sel,
				}}
			}
		}
	}
}

func find(objs []object, kind, name string) *object {
	for i := range objs {
		if objs[i].Kind == kind && objs[i].Metadata.Name == name {
			return &objs[i]
		}
	}
	return nil
}

func env(c container) map[string]envVar {
	m := map[string]envVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

func matches(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func TestKustomization(t *testing.T) {
	b, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	d := yaml.NewDecoder(bytes.NewReader(b))
	d.KnownFields(true)
	if err := d.Decode(&k); err != nil {
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

func TestPgwasmManifest(t *testing.T) {
	objs := decodeAll(t, "pgwasm.yaml")
	ss := find(objs, "StatefulSet", "pgwasm")
	if ss == nil || ss.APIVersion != "apps/v1" || ss.Spec.Template == nil {
		t.Fatalf("no apps/v1 StatefulSet pgwasm with a template: %+v", objs)
	}
	if ss.Spec.Replicas == nil || *ss.Spec.Replicas != 3 || ss.Spec.ServiceName != "pgwasm" {
		t.Errorf("StatefulSet: replicas %v, serviceName %q; want 3 behind the headless Service pgwasm (haproxy.cfg names them)", ss.Spec.Replicas, ss.Spec.ServiceName)
	}
	pod := ss.Spec.Template
	if !matches(ss.Spec.Selector.MatchLabels, pod.Metadata.Labels) {
		t.Errorf("StatefulSet selector %v does not match the pod labels %v", ss.Spec.Selector.MatchLabels, pod.Metadata.Labels)
	}
	a := pod.Metadata.Annotations
	if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != "8080" || a["prometheus.io/path"] != "/metrics" {
		t.Errorf("Prometheus scrape annotations: %v", a)
	}
	psc := pod.Spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("pod must run as non-root: %+v", psc)
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
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/livez" {
		t.Errorf("liveness probe: %+v", c.LivenessProbe)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("readiness probe: %+v", c.ReadinessProbe)
	}
	if c.Resources.Requests["cpu"] == "" || c.Resources.Limits["memory"] == "" {
		t.Errorf("resources: %+v", c.Resources)
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
		if m.MountPath == e["PGWASM_IMAGE"].Value && !m.ReadOnly {
			t.Errorf("the image volume should be read-only")
		}
	}
	for _, v := range pod.Spec.Volumes {
		if !mounted[v.Name] {
			t.Errorf("volume %s not mounted", v.Name)
		}
	}

	svc := find(objs, "Service", "pgwasm")
	if svc == nil || svc.Spec.ClusterIP != "None" || !matches(svc.Spec.Selector.MatchLabels, pod.Metadata.Labels) {
		t.Errorf("want a headless Service pgwasm selecting the pods: %+v", svc)
	}
	pdb := find(objs, "PodDisruptionBudget", "pgwasm")
	if pdb == nil || pdb.APIVersion != "policy/v1" || pdb.Spec.MaxUnavailable == nil || !matches(pdb.Spec.Selector.MatchLabels, pod.Metadata.Labels) {
		t.Errorf("PodDisruptionBudget: %+v", pdb)
	}
}

func TestHAProxyManifest(t *testing.T) {
	objs := decodeAll(t, "haproxy.yaml")
	d := find(objs, "Deployment", "pgwasm-haproxy")
	if d == nil || d.Spec.Template == nil || len(d.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("no Deployment pgwasm-haproxy: %+v", objs)
	}
	pod := d.Spec.Template
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
	svc := find(objs, "Service", "pgwasm-haproxy")
	if svc == nil || !matches(svc.Spec.Selector.MatchLabels, pod.Metadata.Labels) || len(svc.Spec.Ports) != 2 {
		t.Errorf("Service pgwasm-haproxy: %+v", svc)
	}
	if find(objs, "PodDisruptionBudget", "pgwasm-haproxy") == nil {
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
