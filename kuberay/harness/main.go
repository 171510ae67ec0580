// Command harness runs KubeRay's own operator code on c2pg's manifests.
//
// It reads RayCluster, RayService and RayJob manifests (multi-document YAML files named on
// the command line), and for each one prints, as one JSON document on standard output:
//   - the operator's validation of the resource (utils.Validate*Metadata / Validate*Spec);
//   - the fields the operator's API types do not know (a strict decode; a field there is
//     one the operator silently drops);
//   - the Pods the operator would create: the head and one Pod per worker group, built by
//     common.DefaultHeadPodTemplate / DefaultWorkerPodTemplate and common.BuildPod, the
//     calls the RayCluster controller makes (buildHeadPod, buildWorkerPod);
//   - the Services: the cluster's head Service (common.BuildServiceForHeadPod), the
//     RayService's head and serve Services, the RayJob's head Service, the serve Service of
//     a RayCluster that asks for one;
//   - a RayJob's submitter Pod template (common.GetSubmitterTemplate and the submit command).
//
// The controllers' own glue (naming a RayService's cluster, labelling it with its origin,
// the submitter's environment) is unexported, so clusterFor and submitterFor repeat those
// few lines, each naming the function it follows. Everything that decides a Pod or a
// Service's content is the operator's code. The tests in tests/unit/test_deploy_kuberay_harness.py
// read the output.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime/debug"
	"strings"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	rayv1 "github.com/ray-project/kuberay/ray-operator/apis/ray/v1"
	"github.com/ray-project/kuberay/ray-operator/controllers/ray/common"
	"github.com/ray-project/kuberay/ray-operator/controllers/ray/utils"
)

// clusterSuffix stands for the five random characters the operator appends to the name of
// a RayService's or RayJob's cluster (utils.GenerateRayClusterName), so the output is stable.
const clusterSuffix = "xxxxx"

// Result is what the harness says about one manifest.
type Result struct {
	File          string                  `json:"file"`
	Kind          string                  `json:"kind"`
	Name          string                  `json:"name"`
	Namespace     string                  `json:"namespace"`
	Cluster       string                  `json:"cluster"`
	UnknownFields string                  `json:"unknownFields,omitempty"`
	Validation    []string                `json:"validation"`
	Pods          []corev1.Pod            `json:"pods"`
	Services      []corev1.Service        `json:"services"`
	Submitter     *corev1.PodTemplateSpec `json:"submitter,omitempty"`
}

// Output is the harness's whole answer.
type Output struct {
	OperatorVersion string   `json:"operatorVersion"`
	Results         []Result `json:"results"`
}

func main() {
	// The operator logs through controller-runtime; without a logger it warns on stderr.
	logf.SetLogger(logr.Discard())
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: harness MANIFEST.yaml...")
		os.Exit(2)
	}
	out := Output{OperatorVersion: operatorVersion()}
	for _, path := range os.Args[1:] {
		results, err := readFile(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "harness: %s: %v\n", path, err)
			os.Exit(1)
		}
		out.Results = append(out.Results, results...)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintf(os.Stderr, "harness: %v\n", err)
		os.Exit(1)
	}
}

// readFile builds every Ray resource in one YAML file; other kinds are passed over.
func readFile(path string) ([]Result, error) {
	data, err := os.ReadFile(path) // #nosec G304 -- the caller names the manifests to read
	if err != nil {
		return nil, err
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var results []Result
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return results, nil
		}
		if err != nil {
			return nil, err
		}
		var head struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return nil, err
		}
		var result Result
		switch head.Kind {
		case "RayCluster":
			result, err = buildRayCluster(doc)
		case "RayService":
			result, err = buildRayService(doc)
		case "RayJob":
			result, err = buildRayJob(doc)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", head.Kind, err)
		}
		result.File = path
		result.Kind = head.Kind
		results = append(results, result)
	}
}

// decode reads a manifest into the operator's type; unknown fields are reported, not fatal.
func decode(doc []byte, into any) (string, error) {
	if err := yaml.UnmarshalStrict(doc, into); err == nil {
		return "", nil
	} else if err2 := yaml.Unmarshal(doc, into); err2 != nil {
		return "", err2
	} else {
		return err.Error(), nil
	}
}

func errs(list ...error) []string {
	messages := []string{}
	for _, err := range list {
		if err != nil {
			messages = append(messages, err.Error())
		}
	}
	return messages
}

func buildRayCluster(doc []byte) (Result, error) {
	var rc rayv1.RayCluster
	unknown, err := decode(doc, &rc)
	if err != nil {
		return Result{}, err
	}
	result := Result{Name: rc.Name, Namespace: rc.Namespace, Cluster: rc.Name, UnknownFields: unknown}
	result.Validation = errs(utils.ValidateRayClusterMetadata(rc.ObjectMeta), utils.ValidateRayClusterSpec(&rc.Spec, rc.Annotations))
	if err := addCluster(&result, rc); err != nil {
		return Result{}, err
	}
	// RayClusterReconciler.reconcileServeService: only when the cluster asks for one.
	if rc.Annotations[utils.EnableServeServiceKey] == utils.EnableServeServiceTrue { // pragma: allowlist secret
		svc, err := common.BuildServeServiceForRayCluster(context.Background(), rc)
		if err != nil {
			return Result{}, err
		}
		result.Services = append(result.Services, *svc)
	}
	return result, nil
}

func buildRayService(doc []byte) (Result, error) {
	var rs rayv1.RayService
	unknown, err := decode(doc, &rs)
	if err != nil {
		return Result{}, err
	}
	rc := clusterFor(rs.ObjectMeta, rs.Spec.RayClusterSpec, utils.RayServiceCRD)
	result := Result{Name: rs.Name, Namespace: rs.Namespace, Cluster: rc.Name, UnknownFields: unknown}
	result.Validation = errs(utils.ValidateRayServiceMetadata(rs.ObjectMeta), utils.ValidateRayServiceSpec(&rs))
	if err := addCluster(&result, rc); err != nil {
		return Result{}, err
	}
	// RayServiceReconciler.reconcileServicesToReadyCluster: the head and serve Services.
	ctx := context.Background()
	head, err := common.BuildHeadServiceForRayService(ctx, rs, rc)
	if err != nil {
		return Result{}, err
	}
	serve, err := common.BuildServeServiceForRayService(ctx, rs, rc)
	if err != nil {
		return Result{}, err
	}
	result.Services = append(result.Services, *head, *serve)
	return result, nil
}

func buildRayJob(doc []byte) (Result, error) {
	var rj rayv1.RayJob
	unknown, err := decode(doc, &rj)
	if err != nil {
		return Result{}, err
	}
	result := Result{Name: rj.Name, Namespace: rj.Namespace, UnknownFields: unknown}
	result.Validation = errs(utils.ValidateRayJobMetadata(rj.ObjectMeta), utils.ValidateRayJobSpec(&rj))
	if rj.Spec.RayClusterSpec == nil {
		return result, nil
	}
	rc := clusterFor(rj.ObjectMeta, *rj.Spec.RayClusterSpec, utils.RayJobCRD)
	rc.Labels[utils.RayJobSubmissionModeLabelKey] = string(rj.Spec.SubmissionMode)
	result.Cluster = rc.Name
	if err := addCluster(&result, rc); err != nil {
		return Result{}, err
	}
	// RayJobReconciler.reconcileServices: the job's own head Service.
	head, err := common.BuildHeadServiceForRayJob(context.Background(), rj, rc)
	if err != nil {
		return Result{}, err
	}
	result.Services = append(result.Services, *head)
	if rj.Spec.SubmissionMode == "" || rj.Spec.SubmissionMode == rayv1.K8sJobMode {
		submitter, err := submitterFor(&rj, &rc)
		if err != nil {
			return Result{}, err
		}
		result.Submitter = &submitter
	}
	return result, nil
}

// clusterFor is the RayCluster a RayService or RayJob owns: the name and labels that
// constructRayClusterForRayService / RayJobReconciler.constructRayClusterForRayJob give it.
// The origin label decides what BuildPod adds (the serve readiness probe on RayService workers).
func clusterFor(owner metav1.ObjectMeta, spec rayv1.RayClusterSpec, crd utils.CRDType) rayv1.RayCluster {
	labels := map[string]string{}
	maps.Copy(labels, owner.Labels)
	labels[utils.RayOriginatedFromCRNameLabelKey] = owner.Name
	labels[utils.RayOriginatedFromCRDLabelKey] = utils.RayOriginatedFromCRDLabelValue(crd)
	annotations := map[string]string{}
	maps.Copy(annotations, owner.Annotations)
	rc := rayv1.RayCluster{Spec: *spec.DeepCopy()}
	rc.Name = owner.Name + "-" + clusterSuffix
	rc.Namespace = owner.Namespace
	rc.Labels = labels
	rc.Annotations = annotations
	return rc
}

// addCluster adds what the RayCluster controller builds for one cluster: its head Service
// (reconcileHeadService), its headless Service for multi-host groups (reconcileHeadlessService),
// the head Pod (buildHeadPod) and one Pod per worker group (buildWorkerPod).
func addCluster(result *Result, rc rayv1.RayCluster) error {
	ctx := context.Background()
	labels := map[string]string{}
	if v, ok := rc.Spec.HeadGroupSpec.Template.Labels[utils.KubernetesApplicationNameLabelKey]; ok {
		labels[utils.KubernetesApplicationNameLabelKey] = v
	}
	annotations := map[string]string{}
	maps.Copy(annotations, rc.Spec.HeadServiceAnnotations)
	headSvc, err := common.BuildServiceForHeadPod(ctx, rc, labels, annotations)
	if err != nil {
		return err
	}
	result.Services = append(result.Services, *headSvc)
	for _, group := range rc.Spec.WorkerGroupSpecs {
		if group.NumOfHosts > 1 {
			result.Services = append(result.Services, *common.BuildHeadlessServiceForRayCluster(rc))
			break
		}
	}

	fqdnRayIP := utils.GenerateFQDNServiceName(ctx, rc, rc.Namespace)
	headPort := common.GetHeadPort(rc.Spec.HeadGroupSpec.RayStartParams)
	autoscaling := utils.IsAutoscalingEnabled(&rc.Spec)
	creator := utils.GetCRDType(rc.Labels[utils.RayOriginatedFromCRDLabelKey])

	headName := utils.PodName(rc.Name, rayv1.HeadNode, !utils.IsDeterministicHeadPodNameEnabled())
	headTemplate := common.DefaultHeadPodTemplate(ctx, rc, rc.Spec.HeadGroupSpec, headName, headPort)
	headPod := common.BuildPod(ctx, headTemplate, rayv1.HeadNode, rc.Spec.HeadGroupSpec.RayStartParams,
		headPort, autoscaling, creator, fqdnRayIP, nil, rc.Spec.RayVersion)
	result.Pods = append(result.Pods, headPod)

	for _, group := range rc.Spec.WorkerGroupSpecs {
		podName := utils.PodName(fmt.Sprintf("%s-%s", rc.Name, group.GroupName), rayv1.WorkerNode, true)
		template := common.DefaultWorkerPodTemplate(ctx, rc, group, podName, fqdnRayIP, headPort, "", 0, 0)
		pod := common.BuildPod(ctx, template, rayv1.WorkerNode, group.RayStartParams,
			headPort, autoscaling, creator, fqdnRayIP, nil, rc.Spec.RayVersion)
		result.Pods = append(result.Pods, pod)
	}
	return nil
}

// submitterFor is the submitter Pod template of a RayJob in K8sJobMode, as the private
// getSubmitterTemplate and configureSubmitterContainer of rayjob_controller.go build it.
func submitterFor(rj *rayv1.RayJob, rc *rayv1.RayCluster) (corev1.PodTemplateSpec, error) {
	template := common.GetSubmitterTemplate(&rj.Spec, &rc.Spec)
	container := &template.Spec.Containers[utils.RayContainerIndex]
	command, err := common.BuildJobSubmitCommand(rj, rayv1.K8sJobMode)
	if err != nil {
		return corev1.PodTemplateSpec{}, err
	}
	if len(container.Command) == 0 {
		container.Command = utils.GetContainerCommand([]string{"e"})
		container.Args = []string{strings.Join(command, " ")}
	}
	container.Env = append(container.Env,
		corev1.EnvVar{Name: "PYTHONUNBUFFERED", Value: "1"},
		corev1.EnvVar{Name: utils.RAY_DASHBOARD_ADDRESS, Value: rj.Status.DashboardURL},
		corev1.EnvVar{Name: utils.RAY_JOB_SUBMISSION_ID, Value: rj.Status.JobId})
	if utils.IsAuthEnabled(&rc.Spec) {
		common.SetContainerTokenAuthEnvVars(rc.Name, container, rc.Spec.AuthOptions)
	}
	if utils.IsK8sAuthEnabled(rc.Spec.AuthOptions) {
		common.AddRayTokenVolume(&template.Spec)
	}
	return template, nil
}

// operatorVersion is the ray-operator module this binary was built with (go.mod decides it).
func operatorVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/ray-project/kuberay/ray-operator" {
				return dep.Version
			}
		}
	}
	return "unknown"
}
