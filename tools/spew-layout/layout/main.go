// Prints the Go layout of v1.PodTemplateSpec as spew sees it: every type reachable
// from it, with its kind, and for structs their fields in declaration order.
package main

import (
	"fmt"
	"reflect"
	"strings"

	v1 "k8s.io/api/core/v1"
)

var special = map[string]bool{"resource.Quantity": true, "intstr.IntOrString": true, "v1.Time": true, "v1.FieldsV1": true}

func main() {
	seen := map[string]bool{}
	var order []reflect.Type
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		s := t.String()
		if seen[s] {
			return
		}
		seen[s] = true
		order = append(order, t)
		if special[s] {
			return
		}
		switch t.Kind() {
		case reflect.Ptr, reflect.Slice:
			walk(t.Elem())
		case reflect.Map:
			walk(t.Key())
			walk(t.Elem())
		case reflect.Struct:
			for i := 0; i < t.NumField(); i++ {
				walk(t.Field(i).Type)
			}
		}
	}
	walk(reflect.TypeOf(v1.PodTemplateSpec{}))
	for _, t := range order {
		s := t.String()
		kind := t.Kind().String()
		if special[s] {
			kind = "special"
		}
		switch {
		case kind == "special":
			fmt.Printf("%s special\n", s)
		case t.Kind() == reflect.Ptr || t.Kind() == reflect.Slice:
			fmt.Printf("%s %s %s\n", s, kind, t.Elem().String())
		case t.Kind() == reflect.Map:
			fmt.Printf("%s map %s %s\n", s, t.Key().String(), t.Elem().String())
		case t.Kind() == reflect.Struct:
			fmt.Printf("%s struct\n", s)
			for i := 0; i < t.NumField(); i++ {
				f := t.Field(i)
				tag := f.Tag.Get("json")
				name := strings.Split(tag, ",")[0]
				if f.Anonymous && strings.Contains(tag, "inline") {
					name = "-inline"
				}
				if name == "" {
					name = "-none"
				}
				fmt.Printf(" %s %s %s\n", f.Name, name, f.Type.String())
			}
		default:
			fmt.Printf("%s %s\n", s, kind)
		}
	}
}
