// Test-vector oracle for pod_template_hash.rs: reads pod templates as JSON lines, prints
// the spew dump and upstream's ComputeHash for each.
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"
	"strconv"

	"github.com/davecgh/go-spew/spew"
	v1 "k8s.io/api/core/v1"
)

const alphanums = "bcdfghjklmnpqrstvwxz2456789"

func safeEncode(s string) string {
	r := make([]byte, len(s))
	for i, b := range []rune(s) {
		r[i] = alphanums[(int(b) % len(alphanums))]
	}
	return string(r)
}

func main() {
	printer := spew.ConfigState{Indent: " ", SortKeys: true, DisableMethods: true, SpewKeys: true, DisablePointerAddresses: true, DisableCapacities: true}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var t v1.PodTemplateSpec
		if err := json.Unmarshal(sc.Bytes(), &t); err != nil {
			fmt.Println("ERR", err)
			continue
		}
		// The apiserver's round trip: what it stores is what it encodes.
		b, err := json.Marshal(t)
		if err != nil {
			fmt.Println("ERR", err)
			continue
		}
		var t2 v1.PodTemplateSpec
		if err := json.Unmarshal(b, &t2); err != nil {
			fmt.Println("ERR", err)
			continue
		}
		dump := printer.Sprintf("%#v", t2)
		h := fnv.New32a()
		h.Write([]byte(dump))
		plain := safeEncode(fmt.Sprint(h.Sum32()))
		cc := make([]byte, 8)
		n, _ := strconv.Atoi(os.Getenv("COUNT"))
		if n == 0 {
			n = 3
		}
		binary.LittleEndian.PutUint32(cc, uint32(n))
		h.Write(cc)
		fmt.Printf("%s %s\n%s\n", plain, safeEncode(fmt.Sprint(h.Sum32())), dump)
	}
}
