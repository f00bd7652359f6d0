// Command clientgo-peer does Sniffer's job the way a client-go controller does it: a shared
// informer (list+watch, local cache), a rate-limited work queue of keys, N workers, and a
// conditional PATCH of the platform run per real state change.
//
// It is a benchmark peer (bench/), not production code. It derives the run state the simple
// way: Pending → queued, Running → running, Succeeded/Failed → succeeded/failed, with the
// main container's terminated reason and exit code. It remembers the state the platform
// last acknowledged per run (initially "queued", the state runs are created in), sends a
// PATCH only when the derived state differs, with that state as expected_state. A 409/412
// answer teaches it the run's real state (after a 412 the update is sent once more from
// it, as the other peers do); transient errors retry with the queue's per-key exponential
// backoff and the default controller rate limiter, up to 12 times (then the change is
// counted as dropped).
//
// Configuration (environment): PEER_KUBECONFIG, PEER_NAMESPACE, PEER_PLATFORM_URL,
// PEER_PLATFORM_TOKEN_FILE, PEER_WORKERS (default 64), PEER_CONTENT_TYPE ("json" lists and
// watches in JSON, as the Python systems must; default protobuf). It prints "synced" once the
// informer's initial list is in the cache, and counters on SIGTERM.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"
)

const (
	runIDLabel = "sniffer.io/run-id"
	maxRetries = 12
)

type derived struct {
	runID    string
	state    string
	reason   *string
	exitCode *int32
}

type platform struct {
	base   string
	token  string
	client *http.Client
}

type runBody struct {
	State string `json:"state"`
}

type errBody struct {
	Run *runBody `json:"run"`
}

// patch sends one conditional update; it returns the run's state after the call (or "" if
// unknown) and whether the error is worth a retry.
func (p *platform) patch(d derived, expected string) (string, bool, error) {
	body := map[string]any{"state": d.state, "expected_state": expected}
	if d.reason != nil {
		body["reason"] = *d.reason
	}
	if d.exitCode != nil {
		body["exit_code"] = *d.exitCode
	}
	raw, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPatch,
		p.base+"/api/v1/runs/"+url.PathEscape(d.runID), bytes.NewReader(raw))
	if err != nil {
		return "", false, err
	}
	req.Header.Set("Authorization", "Bearer "+p.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return "", true, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	switch {
	case resp.StatusCode == http.StatusOK:
		var ok struct {
			Run runBody `json:"run"`
		}
		if err := json.Unmarshal(data, &ok); err != nil {
			return "", true, err
		}
		return ok.Run.State, false, nil
	case resp.StatusCode == http.StatusConflict || resp.StatusCode == http.StatusPreconditionFailed:
		var e errBody
		if json.Unmarshal(data, &e) == nil && e.Run != nil {
			return e.Run.State, false, fmt.Errorf("%d", resp.StatusCode)
		}
		return "", false, fmt.Errorf("%d without run", resp.StatusCode)
	case resp.StatusCode == http.StatusNotFound:
		return "", false, fmt.Errorf("404")
	default:
		return "", resp.StatusCode >= 500 || resp.StatusCode == 429,
			fmt.Errorf("status %d", resp.StatusCode)
	}
}

func derive(pod *corev1.Pod) (derived, bool) {
	runID := pod.Labels[runIDLabel]
	if runID == "" {
		return derived{}, false
	}
	d := derived{runID: runID}
	switch pod.Status.Phase {
	case corev1.PodPending:
		d.state = "queued"
	case corev1.PodRunning:
		d.state = "running"
	case corev1.PodSucceeded:
		d.state = "succeeded"
	case corev1.PodFailed:
		d.state = "failed"
	default:
		return derived{}, false
	}
	if d.state == "succeeded" || d.state == "failed" {
		if pod.Status.Reason != "" {
			r := pod.Status.Reason
			d.reason = &r
		}
		if len(pod.Spec.Containers) > 0 {
			main := pod.Spec.Containers[0].Name
			for _, cs := range pod.Status.ContainerStatuses {
				if cs.Name == main && cs.State.Terminated != nil {
					t := cs.State.Terminated
					code := t.ExitCode
					d.exitCode = &code
					if d.reason == nil && t.Reason != "" {
						r := t.Reason
						d.reason = &r
					}
				}
			}
		}
	}
	return d, true
}

type controller struct {
	lister   cache.Indexer
	queue    workqueue.TypedRateLimitingInterface[string]
	platform *platform
	mu       sync.Mutex
	acked    map[string]string
	sent     atomic.Int64
	dropped  atomic.Int64
}

func (c *controller) ackedState(runID string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.acked[runID]; ok {
		return s
	}
	return "queued"
}

func (c *controller) setAcked(runID, state string) {
	c.mu.Lock()
	c.acked[runID] = state
	c.mu.Unlock()
}

// sync handles one key; an error asks for a rate-limited retry.
func (c *controller) sync(key string) error {
	obj, exists, err := c.lister.GetByKey(key)
	if err != nil || !exists {
		return nil
	}
	d, ok := derive(obj.(*corev1.Pod))
	if !ok {
		return nil
	}
	expected := c.ackedState(d.runID)
	if expected == d.state {
		return nil
	}
	for attempt := 0; attempt < 2; attempt++ {
		c.sent.Add(1)
		var state string
		var retry bool
		state, retry, err = c.platform.patch(d, expected)
		if state != "" {
			c.setAcked(d.runID, state)
		}
		if err == nil || retry {
			return err
		}
		if state == "" || state == d.state || terminal(state) {
			return nil // settled: nothing more to say about this run
		}
		// A failed precondition carries the run's state: send once more from there.
		expected = state
	}
	return err
}

func terminal(s string) bool {
	return s == "succeeded" || s == "failed" || s == "cancelled"
}

func (c *controller) worker() {
	for {
		key, shutdown := c.queue.Get()
		if shutdown {
			return
		}
		err := c.sync(key)
		switch {
		case err == nil:
			c.queue.Forget(key)
		case c.queue.NumRequeues(key) < maxRetries:
			c.queue.AddRateLimited(key)
		default:
			c.dropped.Add(1)
			c.queue.Forget(key)
		}
		c.queue.Done(key)
	}
}

func main() {
	workers, _ := strconv.Atoi(os.Getenv("PEER_WORKERS"))
	if workers <= 0 {
		workers = 64
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("PEER_KUBECONFIG"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubeconfig:", err)
		os.Exit(2)
	}
	if os.Getenv("PEER_CONTENT_TYPE") != "json" { // protobuf, as Kubernetes' own controllers
		cfg.ContentType = "application/vnd.kubernetes.protobuf"
		cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	}
	cfg.QPS, cfg.Burst = 50, 100
	client := kubernetes.NewForConfigOrDie(cfg)
	token, err := os.ReadFile(os.Getenv("PEER_PLATFORM_TOKEN_FILE"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "token:", err)
		os.Exit(2)
	}
	p := &platform{
		base:  strings.TrimRight(os.Getenv("PEER_PLATFORM_URL"), "/"),
		token: strings.TrimSpace(string(token)),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConns: workers * 2, MaxIdleConnsPerHost: workers * 2,
			IdleConnTimeout: 90 * time.Second}},
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithNamespace(os.Getenv("PEER_NAMESPACE")),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = runIDLabel }),
		// What controller-runtime does by default: managedFields are never read.
		informers.WithTransform(func(obj any) (any, error) {
			if m, ok := obj.(metav1.Object); ok {
				m.SetManagedFields(nil)
			}
			return obj, nil
		}))
	informer := factory.Core().V1().Pods().Informer()
	c := &controller{
		lister: informer.GetIndexer(),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "pods"}),
		platform: p,
		acked:    map[string]string{},
	}
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	_, _ = informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	})
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		os.Exit(1)
	}
	fmt.Println("synced")
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() { defer wg.Done(); c.worker() }()
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	fmt.Printf("stopped sent=%d dropped=%d\n", c.sent.Load(), c.dropped.Load())
}
