<!DOCTYPE PickedPoints>
<PickedPoints>
 <DocumentData>
  <DateTime time="14:02:11" date="2018-04-24"/>
  <User name="annotator"/>
  <DataFileName name="subject_scan.obj"/>
  <templateName name=""/>
 </DocumentData>
 <point x="-45.125" y="25.5" z="60.25" active="1" name="0"/>
 <point x="-15.0" y="24.75" z="78.5" active="1" name="1"/>
 <point y="24.75" z="78.5" x="15.0" name="2" active="1"/>
 <point name="3" active="1" x="45.125" y="25.5" z="60.25"/>
 <point x="0" y="-20.0" z="95.125" active="1" name="4"/>
 <point x="-25.5" y="-45.0" z="75.0" active="0" name="5"/>
 <point x="2.55e1" y="-4.5E1" z="75.0" active="1" name="6"/>
</PickedPoints>
